//! The paper cuts a newcomer hit, each with real workers: a worker's temporary directory
//! is the user's, a test that forgets `test_harness()` is told so, an observer hears
//! progress at a steady rate, and a run's output can be owned while the pool is used.
//!
//! Workers run this test binary through `enable_test_support!`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use procpool::workload::{Sleep, Squares};
use procpool::{Event, JobOptions, Observer, Pool, Registry, StartMethod};

procpool::enable_test_support!(Registry::builtin());

/// `std::env::temp_dir()` as a worker sees it, padded with zeros.
type Path128 = [u8; 128];

fn padded(path: &std::path::Path) -> Path128 {
    let mut out = [0u8; 128];
    let bytes = path.as_os_str().as_encoded_bytes();
    out[..bytes.len().min(128)].copy_from_slice(&bytes[..bytes.len().min(128)]);
    out
}

/// Spawned workers have `TMPDIR` pointed at the pool's private directory for their
/// handshake socket, and get the user's back once it exists, in a process with one thread:
/// a program's worker. `examples/closures.rs` asserts it (its spawned pool's closure
/// returns the worker's `temp_dir()`); this runs that program, as `cargo test` built it,
/// with a `TMPDIR` of its own. (A test binary's spawned worker runs on a libtest thread,
/// where changing the environment is not safe, and keeps the private directory.)
#[test]
fn a_programs_spawned_workers_see_the_users_temporary_directory() {
    let exe = std::env::current_exe().expect("this test's path");
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("closures"))
        .expect("the target directory");
    assert!(
        example.exists(),
        "{} is missing: `cargo test` builds the examples before it runs the tests",
        example.display()
    );
    let tmp = std::env::temp_dir().join(format!("procpool-newcomer-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("a TMPDIR of its own");
    let mut child = std::process::Command::new(&example)
        .env("TMPDIR", &tmp)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run the example");
    let mut status = None;
    common::wait_until(Duration::from_secs(120), || {
        status = child.try_wait().expect("wait for the example");
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let status = status.expect("the example ends within 120 s");
    assert!(status.success(), "examples/closures failed: {status}");
}

/// Forked workers (the fork server's, the default) share the user's environment.
#[test]
fn forked_workers_see_the_users_temporary_directory() {
    let ours = padded(&std::env::temp_dir());
    let mut pool = Pool::builder()
        .workers(2)
        .start(StartMethod::ForkServer)
        .test_harness()
        .build()
        .expect("a pool");
    let seen = pool
        .map_range(4, &(), |_, _| padded(&std::env::temp_dir()))
        .expect("a job")
        .to_vec();
    for theirs in seen {
        assert_eq!(
            String::from_utf8_lossy(&theirs),
            String::from_utf8_lossy(&ours),
            "a worker's temp_dir() is the parent's"
        );
    }
}

#[test]
fn a_test_that_forgets_test_harness_is_told_to_use_it() {
    // Spawned workers run this test binary, whose main is libtest's: without
    // `test_harness()` they never reach procpool's entry.
    let error = Pool::builder()
        .workers(1)
        .start(StartMethod::Spawn)
        .build()
        .expect_err("workers of a test binary need test_harness()");
    let text = error.to_string();
    assert!(text.contains("PoolBuilder::test_harness()"), "{text}");
    assert!(text.contains("enable_test_support!"), "{text}");
    assert!(!text.contains("first thing in main"), "{text}");
}

/// Every `Progress` event's `done`, in order.
#[derive(Default)]
struct Bar(Mutex<Vec<u64>>);

impl Observer for Bar {
    fn event(&self, event: &Event<'_>) {
        if let Event::Progress { done, .. } = event {
            self.0.lock().unwrap().push(*done);
        }
    }
}

#[test]
fn an_observer_hears_progress_at_a_steady_rate() {
    let bar = Arc::new(Bar::default());
    let mut pool = Pool::builder()
        .workers(2)
        .test_harness()
        .observer(bar.clone())
        .build()
        .expect("a pool");
    // 60 chunks of 10 ms on 2 workers: at least 300 ms, on any machine.
    let options = JobOptions {
        chunk_size: Some(1),
        ..JobOptions::default()
    };
    let run = pool
        .run_with(&Sleep { ms: 10.0 }, 60, &options)
        .expect("a job");
    let took = run.stats().wall;
    drop(run);
    let seen = bar.0.lock().unwrap().clone();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert_eq!(
        seen.last(),
        Some(&60),
        "the last event says the job is done: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    // About every 50 ms while it ran (at least 300 ms: five ticks and the end); a tick
    // of 100 ms gave three.
    assert!(
        seen.len() >= 4,
        "{} events in {took:?}: {seen:?}",
        seen.len()
    );
}

#[test]
fn an_owned_output_frees_the_pool() {
    let mut pool = Pool::builder()
        .workers(2)
        .test_harness()
        .build()
        .expect("a pool");
    let owned = pool.run(&Squares, 100).expect("a job").to_vec();
    // The run's borrow ended: the pool answers while the output is held.
    assert_eq!(pool.pids().len(), 2);
    let (again, stats) = pool.run(&Squares, 100).expect("a job").into_parts();
    assert_eq!(owned, again);
    assert_eq!(owned[9], 81);
    assert_eq!(stats.n, 100);
    assert_eq!(pool.pids().len(), 2);
}
