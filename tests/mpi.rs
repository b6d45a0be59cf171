//! The MPI backend (`--features mpi`) under a real `mpirun`: every built-in workload
//! verifies on 2, 3 and 5 ranks (oversubscribed on this machine), through the shared window
//! and across "nodes" (`--mpi-node-size 1`); the JSON carries the `mpi` object; nothing of
//! ours is left in /dev/shm; too few ranks and `--workers` are refused. Every run has a
//! deadline and is killed when it passes it.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest one `mpirun` may take (debug build, oversubscribed, CI under load).
const DEADLINE: Duration = Duration::from_secs(60);

/// One `mpirun` job at a time: a test that checks /dev/shm must not see another test's job's
/// files, and oversubscribed jobs side by side would only slow each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `mpirun -np RANKS procpool --backend mpi ARGS`, killed after [`DEADLINE`].
fn mpirun(ranks: usize, args: &[&str]) -> Outcome {
    let mut command = Command::new("mpirun");
    command
        .args(["-np", &ranks.to_string(), "--oversubscribe"])
        .arg(env!("CARGO_BIN_EXE_procpool"))
        .args(["--backend", "mpi"])
        .args(args);
    finish(start(command), &format!("mpirun -np {ranks} {args:?}"))
}

/// `procpool --backend mpi --ranks RANKS ARGS`: procpool starts mpirun itself.
fn launched(ranks: usize, args: &[&str]) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_procpool"));
    command
        .args(["--backend", "mpi", "--ranks", &ranks.to_string()])
        .args(args);
    start(command)
}

/// Starts `command` with Open MPI allowed to run as root and both outputs piped.
fn start(mut command: Command) -> std::process::Child {
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts (install Open MPI: apt-get install openmpi-bin libopenmpi-dev)")
}

/// Waits for `child` (killed after [`DEADLINE`]) and reads what it printed.
fn finish(mut child: std::process::Child, what: &str) -> Outcome {
    let began = Instant::now();
    let out = child.stdout.take().map(read_all);
    let err = child.stderr.take().map(read_all);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for mpirun") {
            break status;
        }
        if began.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} passed its {DEADLINE:?} deadline");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The pipes close when the last process holding them ends: mpirun's ranks too. One
    // still open 10 s after mpirun ended is a process left behind.
    let collect = |r: Option<std::sync::mpsc::Receiver<String>>| {
        r.map(|r| {
            r.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{what}: a process still holds mpirun's output"))
        })
        .unwrap_or_default()
    };
    Outcome {
        code: status.code(),
        stdout: collect(out),
        stderr: collect(err),
    }
}

/// Reads `pipe` to its end on a thread of its own, so a child that prints much never blocks
/// on a full pipe; the text arrives on the channel returned.
fn read_all<R: std::io::Read + Send + 'static>(mut pipe: R) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx
}

/// What /dev/shm holds now.
fn dev_shm() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn json_run(ranks: usize, args: &[&str]) -> Value {
    let out = mpirun(ranks, &[args, &["--json"]].concat());
    assert_eq!(
        out.code,
        Some(0),
        "mpirun -np {ranks} {args:?}\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    // Only rank 0 prints: one JSON document.
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one report from rank 0: {}", out.stdout);
    serde_json::from_str(lines[0]).expect("the report is JSON")
}

#[test]
fn every_builtin_workload_verifies_on_2_3_and_5_ranks_on_both_routes() {
    let _serial = serial();
    let before = dev_shm();
    let jobs: &[(&str, &[&str], u64)] = &[
        ("squares", &["squares", "200000"], 200_000),
        ("primes", &["primes", "20000"], 20_000),
        ("collatz", &["collatz", "20000"], 20_000),
        (
            "mandelbrot",
            &["mandelbrot", "64", "--max-iter", "100"],
            64 * 64,
        ),
        ("hash", &["hash", "3000", "--rounds", "5"], 3_000),
        ("spin", &["spin", "200", "--us", "20"], 200),
        ("sleep", &["sleep", "16", "--ms", "1"], 16),
    ];
    for &(name, args, n) in jobs {
        for ranks in [2, 3, 5] {
            for (node_size, route) in [
                (None, None),
                (Some("1"), Some("send")),
                (Some("1"), Some("put")),
            ] {
                let mut all: Vec<&str> = args.to_vec();
                if let Some(size) = node_size {
                    all.extend(["--mpi-node-size", size]);
                }
                if let Some(route) = route {
                    all.extend(["--mpi-route", route]);
                }
                let v = json_run(ranks, &all);
                let what =
                    format!("{name} on {ranks} ranks, node size {node_size:?}, route {route:?}");
                assert_eq!(v["verified"], Value::Bool(true), "{what}: {v}");
                assert_eq!(v["workload"], name, "{what}");
                assert_eq!(v["n"], n, "{what}");
                assert_eq!(v["workers"], ranks as u64 - 1, "{what}");
                let mpi = &v["mpi"];
                assert_eq!(mpi["backend"], "mpi", "{what}: {v}");
                assert_eq!(mpi["ranks"], ranks as u64, "{what}");
                // The whole output, n elements (window_bytes is n × the element size).
                let bytes = mpi["window_bytes"].as_u64().expect("window_bytes");
                assert!(bytes >= n, "{what}: {v}");
                match node_size {
                    None => {
                        assert_eq!(mpi["nodes"], 1, "{what}");
                        assert_eq!(mpi["ranks_per_node"], serde_json::json!([ranks]), "{what}");
                        assert_eq!(mpi["shm_result_bytes"], bytes, "{what}");
                        assert_eq!(mpi["cross_node_bytes"], 0, "{what}");
                    }
                    Some(_) => {
                        assert_eq!(mpi["nodes"], ranks as u64, "{what}");
                        assert_eq!(mpi["shm_result_bytes"], 0, "{what}");
                        assert_eq!(mpi["cross_node_bytes"], bytes, "{what}");
                    }
                }
                assert_eq!(mpi["route"], route.unwrap_or("send"), "{what}");
                // Started by mpirun: the time from its start to the first chunk is known.
                let launch = mpi["launch_s"].as_f64().expect("launch_s under mpirun");
                assert!(
                    launch > 0.0 && launch < DEADLINE.as_secs_f64(),
                    "{what}: {v}"
                );
                // Squares and primes reduce: the workers' accumulators, combined in chunk
                // order, equal the single-process output reduced over the same chunks.
                if matches!(name, "squares" | "primes") {
                    assert!(!v["reduction"].is_null(), "{what}: {v}");
                    assert_eq!(v["reduction"], v["baseline_reduction"], "{what}");
                }
                let keys: BTreeSet<&str> = mpi
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|k| k.as_str())
                    .collect();
                let expected: BTreeSet<&str> = [
                    "backend",
                    "ranks",
                    "nodes",
                    "ranks_per_node",
                    "hosts",
                    "window_bytes",
                    "shm_result_bytes",
                    "cross_node_bytes",
                    "route",
                    "launch_s",
                    "wait",
                    "stale_shm_files_removed",
                    "mca_set",
                    "library",
                ]
                .into_iter()
                .collect();
                assert_eq!(keys, expected, "{what}");
            }
        }
    }
    let left: Vec<_> = dev_shm().difference(&before).cloned().collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

#[test]
fn the_text_report_names_the_ranks_and_the_routes() {
    let _serial = serial();
    let out = mpirun(3, &["hash", "2000", "--rounds", "5"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("verified     yes"), "{}", out.stdout);
    assert!(out.stdout.contains("2 MPI worker ranks"), "{}", out.stdout);
    assert!(
        out.stdout.contains("through the shared window"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("MPI_Iprobe"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("from mpirun's start to the first chunk"),
        "{}",
        out.stdout
    );
    // Every result across "nodes", by each route: the lines say which, and how much.
    let out = mpirun(
        3,
        &[
            "primes",
            "20000",
            "--mpi-node-size",
            "1",
            "--mpi-route",
            "put",
        ],
    );
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("0 B of results through the shared window, 19.5 KiB put into it"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("(MPI_Put into rank 0's window)"),
        "{}",
        out.stdout
    );
    let out = mpirun(3, &["primes", "20000", "--mpi-node-size", "1"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("(19.5 KiB of them results)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("(sent back in each chunk's reply)"),
        "{}",
        out.stdout
    );
}

#[test]
fn an_empty_job_verifies_as_on_the_process_backend() {
    let _serial = serial();
    let before = dev_shm();
    // n = 0: an empty window, viewed as elements of every size, on both routes.
    for args in [
        &["squares", "0"][..],
        &["squares", "0", "--mpi-node-size", "1", "--mpi-route", "put"],
        &[
            "squares",
            "0",
            "--mpi-node-size",
            "1",
            "--mpi-route",
            "send",
        ],
        &["mandelbrot", "0"],
        &["hash", "0", "--repeat", "2"],
    ] {
        let v = json_run(3, args);
        assert_eq!(v["verified"], Value::Bool(true), "{args:?}: {v}");
        assert_eq!(v["n"], 0, "{args:?}: {v}");
        assert_eq!(v["mpi"]["window_bytes"], 0, "{args:?}: {v}");
    }
    let left: Vec<_> = dev_shm().difference(&before).cloned().collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

#[test]
fn repeated_rounds_reuse_the_ranks_and_verify_each() {
    let _serial = serial();
    let v = json_run(3, &["squares", "100000", "--repeat", "3", "--warmup", "1"]);
    assert_eq!(v["verified"], Value::Bool(true), "{v}");
    assert_eq!(v["repeat"]["runs"], 3, "{v}");
}

#[test]
fn one_rank_or_workers_is_refused_in_one_line() {
    let _serial = serial();
    let out = mpirun(1, &["hash", "100"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("at least 2 ranks"), "{}", out.stderr);
    let out = mpirun(2, &["--workers", "4", "hash", "100"]);
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("mpirun -np K"), "{}", out.stderr);
}

/// Whether this test process is root (unshare needs it).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn a_dev_shm_too_small_for_the_window_is_refused_in_one_line() {
    let _serial = serial();
    if !is_root() {
        eprintln!("skipped: a private 64 MiB /dev/shm (unshare -m) needs root");
        return;
    }
    // A private mount namespace: the machine's /dev/shm is not touched.
    let script = format!(
        "mount -t tmpfs -o size=64m tmpfs /dev/shm && exec mpirun -np 3 --oversubscribe {} \
         --backend mpi squares 1e7",
        env!("CARGO_BIN_EXE_procpool")
    );
    let out = Command::new("timeout")
        .args(["60", "unshare", "-m", "sh", "-c", &script])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("unshare runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("/dev/shm"))
        .unwrap_or_else(|| panic!("no line about /dev/shm: {stderr}"));
    assert!(line.contains("needs 77.3 MiB"), "{line}");
    assert!(line.contains("--shm-size"), "{line}");
}

#[test]
fn a_rank_that_dies_ends_the_job_and_leaves_no_rank_running() {
    let _serial = serial();
    let before = dev_shm();
    let mut command = Command::new("mpirun");
    command
        .args([
            "-np",
            "3",
            "--oversubscribe",
            env!("CARGO_BIN_EXE_procpool"),
        ])
        .args(["--backend", "mpi", "hash", "1000000", "--rounds", "50"]);
    let child = start(command);
    let (_, seen) = three_ranks(|| Some(child.id()));
    // Let them reach the job, then kill the last-started rank (a worker, or rank 0).
    std::thread::sleep(Duration::from_millis(800));
    let victim = *seen.iter().max().expect("a rank");
    let _ = Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status();
    let out = finish(child, "mpirun after a rank was killed");
    assert_ne!(out.code, Some(0), "the job fails when a rank dies");
    // mpirun's last SIGKILL may take a moment to land.
    all_gone(&seen);
    // Open MPI may leave the killed rank's files in /dev/shm; the next run removes them
    // once they are older than a starting job's (5 s) and no process maps them.
    std::thread::sleep(Duration::from_secs(6));
    let next = json_run(2, &["squares", "1000"]);
    assert_eq!(next["verified"], Value::Bool(true), "{next}");
    let left: Vec<_> = dev_shm().difference(&before).cloned().collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

#[test]
fn every_schedule_and_a_mix_of_routes_verify() {
    let _serial = serial();
    for schedule in ["static", "dynamic", "guided"] {
        let v = json_run(3, &["squares", "100000", "--schedule", schedule]);
        assert_eq!(v["verified"], Value::Bool(true), "{schedule}: {v}");
        assert_eq!(v["schedule"], schedule, "{v}");
    }
    // Two "nodes" of two ranks: rank 1 shares rank 0's window, ranks 2 and 3 send theirs.
    let v = json_run(
        4,
        &[
            "squares",
            "100000",
            "--chunk-size",
            "1000",
            "--inflight",
            "4",
            "--mpi-node-size",
            "2",
        ],
    );
    assert_eq!(v["verified"], Value::Bool(true), "{v}");
    assert_eq!(v["inflight"], 4, "{v}");
    let mpi = &v["mpi"];
    assert_eq!(mpi["ranks_per_node"], serde_json::json!([2, 2]), "{v}");
    let (shm, cross) = (
        mpi["shm_result_bytes"].as_u64().unwrap(),
        mpi["cross_node_bytes"].as_u64().unwrap(),
    );
    assert_eq!(shm + cross, 800_000, "{v}");
    assert!(shm > 0 && cross > 0, "both routes carried results: {v}");
}

#[test]
fn the_reductions_are_the_known_sums_and_counts() {
    let _serial = serial();
    // The sum of i² for i < 1000 (wrapping u64) and the primes below 1000.
    let v = json_run(3, &["squares", "1000", "--chunk-size", "7"]);
    assert_eq!(v["reduction"], 332_833_500u64, "{v}");
    assert_eq!(v["verified"], Value::Bool(true), "{v}");
    let v = json_run(
        4,
        &[
            "primes",
            "1000",
            "--mpi-node-size",
            "2",
            "--mpi-route",
            "put",
        ],
    );
    assert_eq!(v["reduction"], 168, "{v}");
    assert_eq!(v["verified"], Value::Bool(true), "{v}");
}

/// The process ids of the ranks of the mpirun whose pid is `mpirun`.
fn ranks_of(mpirun: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &mpirun.to_string()])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The mpirun that procpool `launcher` started: its child that is not its fork server
/// (`procpool-server`, which `init` forks in every program).
fn mpirun_of(launcher: u32) -> Option<u32> {
    ranks_of(launcher).into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() != "procpool-server")
    })
}

/// Waits (up to [`DEADLINE`]) until the mpirun that `mpirun` finds has three ranks; returns
/// its pid and theirs.
fn three_ranks(mpirun: impl Fn() -> Option<u32>) -> (u32, Vec<u32>) {
    let began = Instant::now();
    loop {
        let found = mpirun().map(|m| (m, ranks_of(m)));
        match found {
            Some((m, ranks)) if ranks.len() == 3 => return (m, ranks),
            _ if began.elapsed() > DEADLINE => panic!("three ranks did not start: {found:?}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Whether `pid` is still a live rank of ours (not a zombie, not a reused pid).
fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("--backend"))
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Waits up to 10 s for every pid in `pids` to be gone; fails naming those left.
fn all_gone(pids: &[u32]) {
    let began = Instant::now();
    while pids.iter().any(|&p| alive(p)) && began.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    // Ours (their command line says so): stopped before the test fails, not left behind.
    for pid in &left {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    assert!(left.is_empty(), "still running: {left:?}");
}

#[test]
fn a_panicking_chunk_ends_the_job_with_exit_1_naming_rank_host_and_chunk() {
    let _serial = serial();
    let before = dev_shm();
    let out = finish(
        launched(
            3,
            &["hash", "20000", "--rounds", "5", "--inject", "panic@3"],
        ),
        "panic@3",
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("procpool: the kernel panicked"))
        .unwrap_or_else(|| panic!("no line about the panic: {}", out.stderr));
    assert!(line.contains("on chunk 3 (elements 7500..10000)"), "{line}");
    assert!(line.contains("injected panic at chunk 3"), "{line}");
    assert!(line.contains("MPI rank "), "{line}");
    assert!(line.contains(" on host "), "{line}");
    // The ranks finished together: MPI finalized and Open MPI removed its files.
    let left: Vec<_> = dev_shm().difference(&before).cloned().collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

#[test]
fn a_rank_killed_at_a_chunk_ends_the_job_naming_it_and_leaves_no_rank() {
    let _serial = serial();
    for action in ["kill", "segv", "exit", "abort"] {
        let fault = format!("{action}@2");
        let out = finish(
            launched(3, &["hash", "20000", "--rounds", "5", "--inject", &fault]),
            &fault,
        );
        assert_eq!(out.code, Some(1), "{fault}: {}", out.stderr);
        let line = out
            .stderr
            .lines()
            .find(|l| l.starts_with("procpool: MPI rank "))
            .unwrap_or_else(|| panic!("{fault}: no line naming the rank: {}", out.stderr));
        assert!(
            line.contains("died while running chunk 2 (elements 5000..7500)"),
            "{fault}: {line}"
        );
        assert!(line.contains(" on host "), "{fault}: {line}");
        assert!(line.contains("cannot replace a rank"), "{fault}: {line}");
    }
    // Under a plain mpirun, the exit code is mpirun's (here 128 + SIGKILL), and rank 0
    // says the same.
    let out = mpirun(3, &["hash", "20000", "--rounds", "5", "--inject", "kill@2"]);
    assert_eq!(out.code, Some(137), "{}", out.stderr);
    assert!(
        out.stderr.contains("died while running chunk 2"),
        "{}",
        out.stderr
    );
    // A hung rank would hang the job: refused before anything runs.
    let out = mpirun(2, &["hash", "100", "--inject", "hang@0"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("no chunk time limit"), "{}", out.stderr);
}

#[test]
fn sigint_and_sigterm_stop_the_job_with_130_and_143_and_leave_nothing() {
    let _serial = serial();
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let child = launched(3, &["hash", "2000000", "--rounds", "50"]);
        let launcher = child.id();
        // procpool → mpirun → 3 ranks.
        let (mpirun, seen) = three_ranks(|| mpirun_of(launcher));
        // Into the job, then the signal to procpool, as a Ctrl-C or `kill` would send it.
        std::thread::sleep(Duration::from_millis(800));
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &launcher.to_string()])
            .status();
        let out = finish(child, &format!("SIG{signal}"));
        assert_eq!(out.code, Some(code), "SIG{signal}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "interrupted by SIG{signal}: mpirun stopped every rank"
            )),
            "{}",
            out.stderr
        );
        all_gone(&seen);
        assert!(!alive(mpirun), "mpirun {mpirun} still running");
    }
    // procpool SIGKILLed: mpirun gets SIGTERM from the kernel and stops every rank (the job
    // itself would run for minutes). No pipes: an orphaned mpirun would hold them open.
    // A TMPDIR of its own: procpool's run directory stays behind (the next run removes it).
    let tmpdir = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_procpool"))
        .args([
            "--backend",
            "mpi",
            "--ranks",
            "3",
            "hash",
            "10000000",
            "--rounds",
            "50",
        ])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("TMPDIR", tmpdir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("procpool starts");
    let launcher = child.id();
    let (mpirun, seen) = three_ranks(|| mpirun_of(launcher));
    child.kill().expect("SIGKILL procpool");
    child.wait().expect("reap procpool");
    all_gone(&[&seen[..], &[mpirun]].concat());
}

#[test]
fn ranks_is_refused_under_mpirun_and_on_the_process_backend() {
    let _serial = serial();
    let out = mpirun(2, &["--ranks", "2", "hash", "100"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("drop it"), "{}", out.stderr);
    let out = Command::new(env!("CARGO_BIN_EXE_procpool"))
        .args(["--ranks", "2", "hash", "100"])
        .output()
        .expect("procpool runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ranks is for --backend mpi"));
}

#[test]
fn ranks_started_with_different_workloads_end_the_job_instead_of_hanging() {
    let _serial = serial();
    let exe = env!("CARGO_BIN_EXE_procpool");
    // mpirun's MPMD form: rank 0 runs hash, rank 1 squares.
    let mut command = Command::new("mpirun");
    command.args([
        "-np",
        "1",
        "--oversubscribe",
        exe,
        "--backend",
        "mpi",
        "hash",
        "100",
    ]);
    command.args([":", "-np", "1", exe, "--backend", "mpi", "squares", "100"]);
    let out = finish(start(command), "mismatched ranks");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "runs workload `squares` but rank 0 sent `hash`: start every rank with the same command"
        ),
        "{}",
        out.stderr
    );
}

/// A stand-in for ssh: starts the command on this machine in a UTS namespace of its own,
/// under the host name it was asked for. To Open MPI that is a second machine, with its
/// own daemon, and TCP between the two.
const FAKE_SSH: &str = r#"#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -*) shift;; *) break;; esac; done
host="$1"; shift
exec unshare -u sh -c "hostname $host && $*"
"#;

#[test]
fn a_hostfile_run_on_two_hosts_verifies_with_results_crossing_between_them() {
    let _serial = serial();
    let namespaces = Command::new("unshare")
        .args(["-u", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !is_root() || !namespaces {
        eprintln!(
            "skipped: a second host in a UTS namespace needs root and `unshare -u` (util-linux)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ssh = dir.path().join("ssh");
    std::fs::write(&ssh, FAKE_SSH).expect("write the ssh stand-in");
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make it executable");
    let hosts = dir.path().join("hosts");
    let here = String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap();
    std::fs::write(
        &hosts,
        format!("{} slots=2\nprocpool-node2 slots=2\n", here.trim()),
    )
    .expect("write the hostfile");
    let run = |route: &str| {
        let mut command = Command::new("mpirun");
        command
            .arg("--hostfile")
            .arg(&hosts)
            .args(["-np", "4", "--mca", "plm_rsh_agent"])
            .arg(&ssh)
            .arg(env!("CARGO_BIN_EXE_procpool"))
            .args(["--backend", "mpi", "primes", "200000", "--json"])
            .args(["--mpi-route", route]);
        finish(start(command), &format!("two hosts, route {route}"))
    };
    let check = |out: &Outcome, route: &str| {
        let v: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON report");
        assert_eq!(v["verified"], Value::Bool(true), "{v}");
        assert_eq!(v["reduction"], v["baseline_reduction"], "{v}");
        let mpi = &v["mpi"];
        assert_eq!(mpi["nodes"], 2, "{v}");
        assert_eq!(mpi["ranks_per_node"], serde_json::json!([2, 2]), "{v}");
        assert_eq!(mpi["hosts"][2], "procpool-node2", "{v}");
        assert_eq!(mpi["route"], route, "{v}");
        let (shm, cross) = (
            mpi["shm_result_bytes"].as_u64().unwrap(),
            mpi["cross_node_bytes"].as_u64().unwrap(),
        );
        assert!(shm > 0 && cross > 0, "both routes carried results: {v}");
        assert_eq!(shm + cross, 200_000, "{v}");
    };
    let out = run("send");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    check(&out, "send");
    // One-sided puts between hosts need an MPI that has them: Open MPI 4.1 over TCP does
    // not, and the run stops before any chunk, in one line, exit 2.
    let out = run("put");
    match out.code {
        Some(0) => check(&out, "put"),
        _ => {
            assert_eq!(out.code, Some(2), "{}", out.stderr);
            assert!(
                out.stderr.contains("use --mpi-route send"),
                "{}",
                out.stderr
            );
        }
    }
    // Both hosts' daemons and ranks are gone.
    let left = Command::new("pgrep")
        .args(["-f", &dir.path().to_string_lossy()])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "left running: {:?}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// The rank number of process `pid` of an mpirun (`OMPI_COMM_WORLD_RANK` in its
/// environment).
fn rank_number(pid: u32) -> Option<usize> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"OMPI_COMM_WORLD_RANK="))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
}

/// CPU time of `pid` so far, in clock ticks (user + system); `None` once it is gone.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Waits (up to [`DEADLINE`]) until rank 0 (`ranks[0]`) computes alone while the workers
/// idle: every chunk is done and rank 0 runs the single-process baseline. Panics when the
/// job ends first.
fn wait_for_the_baseline(ranks: &[u32]) {
    let began = Instant::now();
    let ticks = || {
        ranks
            .iter()
            .map(|&p| cpu_ticks(p))
            .collect::<Option<Vec<u64>>>()
    };
    let mut last = ticks().expect("the ranks run");
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = ticks().expect("the job ended before its baseline was seen");
        let root = now[0] - last[0];
        let workers: u64 = now[1..].iter().zip(&last[1..]).map(|(n, l)| n - l).sum();
        // Rank 0 busy (at least 50 ms of CPU in 300 ms), the workers four times less.
        if root >= 5 && workers * 4 < root {
            return;
        }
        assert!(began.elapsed() < DEADLINE, "no baseline seen: {now:?}");
        last = now;
    }
}

#[test]
fn a_rank_killed_during_the_baseline_is_named_with_the_phase() {
    let _serial = serial();
    // Rank 1 (rank 0 then says so itself) and rank 0 (the launcher says so).
    for victim in [1, 0] {
        let child = launched(3, &["hash", "20000", "--rounds", "200"]);
        let launcher = child.id();
        let (mpirun, seen) = three_ranks(|| mpirun_of(launcher));
        let mut by_rank = vec![0u32; 3];
        for &pid in &seen {
            by_rank[rank_number(pid).expect("a rank number")] = pid;
        }
        wait_for_the_baseline(&by_rank);
        let pid = by_rank[victim];
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let out = finish(child, &format!("rank {victim} killed in the baseline"));
        assert_eq!(out.code, Some(1), "rank {victim}: {}", out.stderr);
        let line = out
            .stderr
            .lines()
            .find(|l| l.starts_with(&format!("procpool: MPI rank {victim} (pid {pid} on host ")))
            .unwrap_or_else(|| panic!("no line naming rank {victim}: {}", out.stderr));
        assert!(
            line.contains("died during the single-process baseline"),
            "{line}"
        );
        assert!(line.contains("mpirun stopped every rank"), "{line}");
        all_gone(&[&seen[..], &[mpirun]].concat());
    }
}

/// What `dir` holds now.
fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_double_sigterm_ends_the_run_and_leaves_nothing_in_tmpdir() {
    let _serial = serial();
    let tmpdir = tempfile::tempdir().expect("a temporary directory");
    for pause in [Duration::from_millis(100), Duration::from_millis(1500)] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_procpool"));
        command
            .args(["--backend", "mpi", "--ranks", "3"])
            .args(["hash", "2000000", "--rounds", "50"])
            .env("TMPDIR", tmpdir.path());
        let child = start(command);
        let launcher = child.id();
        let (mpirun, seen) = three_ranks(|| mpirun_of(launcher));
        std::thread::sleep(Duration::from_millis(800));
        // Open MPI's session directory is there while the job runs.
        assert!(!entries(tmpdir.path()).is_empty(), "mpirun uses TMPDIR");
        for _ in 0..2 {
            let _ = Command::new("kill")
                .args(["-TERM", &launcher.to_string()])
                .status();
            std::thread::sleep(pause);
        }
        let out = finish(child, "two SIGTERMs");
        assert_eq!(out.code, Some(143), "{}", out.stderr);
        all_gone(&[&seen[..], &[mpirun]].concat());
        let left = entries(tmpdir.path());
        assert!(left.is_empty(), "after {pause:?}: left in TMPDIR: {left:?}");
    }
}

#[test]
fn a_run_directory_left_by_a_killed_procpool_is_removed_by_the_next_run() {
    let _serial = serial();
    let tmpdir = tempfile::tempdir().expect("a temporary directory");
    let mut command = Command::new(env!("CARGO_BIN_EXE_procpool"));
    command
        .args(["--backend", "mpi", "--ranks", "3"])
        .args(["hash", "2000000", "--rounds", "50"])
        .env("TMPDIR", tmpdir.path());
    let mut child = start(command);
    let launcher = child.id();
    let (mpirun, seen) = three_ranks(|| mpirun_of(launcher));
    child.kill().expect("SIGKILL procpool");
    child.wait().expect("reap procpool");
    all_gone(&[&seen[..], &[mpirun]].concat());
    // Nobody was left to remove it.
    let left = entries(tmpdir.path());
    assert!(
        left.iter()
            .any(|e| e.starts_with(&format!("procpool-mpi-{launcher}-"))),
        "{left:?}"
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_procpool"));
    command
        .args(["--backend", "mpi", "--ranks", "2", "squares", "1000"])
        .env("TMPDIR", tmpdir.path());
    let out = finish(start(command), "the next run");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let left = entries(tmpdir.path());
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}
