//! cargo run --release --example misuse
//!
//! The mistakes a newcomer makes with a process pool, made on purpose, and what procpool
//! does about each. Every check asserts; the program exits 0 only when all of them hold
//! (CI runs it):
//!
//! 1. `main` forgets `procpool::init()`: one clear error, one level of workers, no fork
//!    bomb, nothing left behind;
//! 2. a kernel panics: a structured error with message and location, and the same pool
//!    runs the next job;
//! 3. two workload types under one name: refused when registered, and a job of the other
//!    type is refused by the pool;
//! 4. a workload the workers do not have: refused before any worker sees it;
//! 5. a pool built on a thread that ends: its workers live on;
//! 6. workers killed during a job: recovered, and the library prints nothing;
//! 7. forked workers without the builder's registry: the error names
//!    `PoolBuilder::registry`, which forked workers serve.

use std::ops::Range;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procpool::workload::Squares;
use procpool::{Error, JobOptions, Pool, Registry, Workload};
use serde::{Deserialize, Serialize};

/// Which part of this program a child process runs (set by the parent).
const PART: &str = "PROCPOOL_MISUSE_PART";

/// `out[i] = i + k`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Add {
    k: u64,
}

impl Workload for Add {
    const NAME: &'static str = "op";
    type Output = u64;
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = i + self.k;
        }
    }
}

/// `out[i] = i - k`, registered nowhere: mistake 4.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sub {
    k: u64,
}

impl Workload for Sub {
    const NAME: &'static str = "sub";
    type Output = u64;
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = i.wrapping_sub(self.k);
        }
    }
}

/// `out[i] = i * k`, under the same name as [`Add`]: the collision of mistake 3.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Mul {
    k: u64,
}

impl Workload for Mul {
    const NAME: &'static str = "op";
    type Output = u64;
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = i * self.k;
        }
    }
}

fn main() {
    match std::env::var(PART).as_deref() {
        // Mistake 1, in a child: this branch never calls init, and neither do its workers
        // (the same program, re-executed with the same environment).
        Ok("forgot-init") => forgot_init(),
        Ok("quiet") => {
            procpool::init();
            quiet();
        }
        _ => {
            // The right way: first thing in main.
            procpool::init_with(Registry::builtin().register::<Add>());
            parent();
        }
    }
}

fn parent() {
    // First, while this process has one thread: `StartMethod::Fork` needs that.
    check_fork_registry();
    check_forgotten_init();
    check_panic();
    check_name_collision();
    check_unregistered();
    check_short_lived_thread();
    check_quiet();
    println!("all mistakes handled");
}

/// A `main` without `init` that builds a pool. As the top process it gets the workers'
/// refusal; as a worker it refuses to build a pool of its own.
fn forgot_init() {
    match Pool::builder().workers(2).build() {
        Ok(_) => {
            eprintln!("a pool started although its workers forgot init");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

/// Runs this program as a child running `part`, with its own empty TMPDIR, and returns
/// its exit code, its stderr and that TMPDIR's entries afterwards.
fn child(part: &str) -> (Option<i32>, String, Vec<String>) {
    let tmp = std::env::temp_dir().join(format!("procpool-misuse-{}-{part}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).expect("a TMPDIR for the child");
    let exe = std::env::current_exe().expect("this program's path");
    let mut child = Command::new(exe)
        .env(PART, part)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a child of this program");
    let mut stderr = child.stderr.take().expect("its stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if began.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the `{part}` child did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = reader.join().unwrap_or_default();
    let left = std::fs::read_dir(&tmp)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&tmp);
    (status.code(), stderr, left)
}

fn check_forgotten_init() {
    let began = Instant::now();
    let (code, stderr, left) = child("forgot-init");
    // The workers (level 1) refused to build pools of their own: the child's pool failed
    // to start, with the advice, and nothing deeper ever ran.
    assert_eq!(code, Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("before it connected") && last.contains("call procpool::init()"),
        "{stderr}"
    );
    let refusals = stderr.matches("started as a procpool worker").count();
    assert!(refusals >= 1, "each worker says why it gave up: {stderr}");
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "no recursion to wait for"
    );
    println!("ok 1: a forgotten init is one clear error, no fork bomb, nothing left");
}

fn check_panic() {
    let mut pool = Pool::builder().workers(2).build().expect("a pool");
    let pids = pool.pids();
    let options = JobOptions {
        chunk_size: Some(100),
        faults: vec!["panic@2".parse().expect("a fault")],
        ..JobOptions::default()
    };
    match pool.run_with(&Squares, 1000, &options).err() {
        Some(Error::KernelPanicked {
            chunk,
            message,
            location,
            ..
        }) => {
            assert_eq!(chunk, 2);
            assert_eq!(message, "injected panic at chunk 2");
            assert!(location.is_some());
        }
        other => panic!("expected a kernel panic error, got {other:?}"),
    }
    let run = pool
        .run(&Add { k: 3 }, 1000)
        .expect("the same pool, the next job");
    assert_eq!(run.results()[10], 13);
    drop(run);
    assert_eq!(pool.pids(), pids, "the panic cost the job, not the workers");
    println!("ok 2: a panic is a structured error, and the same workers run the next job");
}

fn check_name_collision() {
    let err = Registry::builtin()
        .register::<Add>()
        .try_register::<Mul>()
        .expect_err("two types, one name");
    assert!(err.to_string().contains("`op` is taken by"), "{err}");
    // The workers registered Add as `op`; a Mul job under that name would silently run Add.
    let mut pool = Pool::builder().workers(2).build().expect("a pool");
    let refused = pool
        .run(&Mul { k: 2 }, 10)
        .err()
        .expect("Mul is not the `op` they have");
    assert!(
        refused.to_string().contains("two types share one name"),
        "{refused}"
    );
    assert_eq!(pool.run(&Add { k: 3 }, 10).expect("Add").results()[9], 12);
    println!("ok 3: two workloads under one name are refused: {err}");
}

fn check_unregistered() {
    let mut pool = Pool::builder().workers(2).build().expect("a pool");
    let pids = pool.pids();
    let err = pool
        .run(&Sub { k: 2 }, 10)
        .err()
        .expect("Sub is not registered");
    assert!(err.is_invalid_input(), "{err}");
    assert!(err.to_string().contains("not registered"), "{err}");
    assert_eq!(pool.pids(), pids, "no worker was touched");
    assert_eq!(
        pool.run(&Add { k: 1 }, 10).expect("next job").results()[9],
        10
    );
    println!("ok 4: an unregistered workload is refused before any worker sees it");
}

/// Forked workers serve the builder's registry, not `init_with`'s: a pool of them without
/// `.registry(…)` has only the built-ins, and says where to register.
fn check_fork_registry() {
    let mut forked = Pool::builder()
        .workers(2)
        .start(procpool::StartMethod::Fork)
        .build()
        .expect("a forked pool");
    let err = forked
        .run(&Add { k: 2 }, 10)
        .err()
        .expect("Add is not in the builder's registry");
    assert!(err.to_string().contains("PoolBuilder::registry"), "{err}");
    assert!(!err.to_string().contains("init_with"), "{err}");
    drop(forked);
    let mut forked = Pool::builder()
        .workers(2)
        .start(procpool::StartMethod::Fork)
        .registry(Registry::builtin().register::<Add>())
        .build()
        .expect("a forked pool");
    assert_eq!(
        forked.run(&Add { k: 2 }, 10).expect("registered").results()[9],
        11
    );
    println!("ok 7: forked workers' registry is the builder's, and the error says so");
}

fn check_short_lived_thread() {
    let mut pool = std::thread::spawn(|| Pool::builder().workers(2).build())
        .join()
        .expect("the building thread")
        .expect("a pool");
    std::thread::sleep(Duration::from_millis(100));
    let run = pool
        .run(&Squares, 1000)
        .expect("the workers outlived that thread");
    assert_eq!(run.stats().restarts, 0, "{:?}", run.stats().deaths);
    println!("ok 5: a pool built on a thread that ended keeps its workers");
}

/// In a child: a job whose workers are killed twice; the library must print nothing.
fn quiet() {
    let mut pool = Pool::builder().workers(2).build().expect("a pool");
    let options = JobOptions {
        chunk_size: Some(100),
        faults: vec![
            "kill@1".parse().expect("a fault"),
            "kill@5".parse().expect("a fault"),
        ],
        ..JobOptions::default()
    };
    let run = pool.run_with(&Squares, 1000, &options).expect("recovered");
    assert_eq!(run.stats().restarts, 2);
}

fn check_quiet() {
    let (code, stderr, left) = child("quiet");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "the library printed:\n{stderr}");
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    println!("ok 6: workers lost and replaced, and the library printed nothing");
}
