//! What a worker leaves behind, and what a worker that never gets going holds up.
//!
//! A kernel may start processes of its own (a helper with `Command::spawn`, a `fork`),
//! which inherit the worker's output pipe and channel: procpool must neither wait for them
//! nor let them hide the worker's death, and they end with the worker (its process group)
//! unless they left it. A worker frozen (SIGSTOP) right after its fork, before its exec,
//! must hold up neither the handshake deadline nor SIGTERM, and must not outlive procpool.
//!
//! Real processes throughout: kernels run in workers started through this test binary
//! (`enable_test_support!`), or the real `procpool` binary with a test thread that stops
//! each of its children the moment it appears.

mod common;

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::{Procpool, TEARDOWN_DEADLINE, assert_no_tagged_process, wait_until};
use nix::sys::signal::Signal;
use procpool::{Dispatch, JobOptions, Pool, Registry, Workload};
use serde::{Deserialize, Serialize};

/// What the first chunk's kernel (`range.start == 0`) does besides computing `i * i`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Leave {
    /// Starts `sleep 60` with the worker's stdout and stderr, and goes on.
    Helper,
    /// Starts `sleep 60` in a process group (and session) of its own, and goes on.
    EscapedHelper,
    /// Forks a child that keeps every descriptor of the worker (its channel too) and waits;
    /// then the worker SIGKILLs itself. Only on the first attempt: the retry computes.
    ForkAndDie,
}

/// `i * i`, with the first chunk leaving something behind; the pids it leaves are written
/// as files named `left.PID` in `dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Leaves {
    dir: PathBuf,
    leave: Leave,
}

impl Workload for Leaves {
    const NAME: &'static str = "leaves";
    type Output = u64;

    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        if range.start == 0 {
            self.leave();
        }
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = i * i;
        }
    }
}

impl Leaves {
    fn note(&self, pid: u32) {
        std::fs::write(self.dir.join(format!("left.{pid}")), b"").expect("note a pid");
    }

    // The helpers are not waited for on purpose: they outlive the chunk.
    #[allow(clippy::zombie_processes)]
    fn leave(&self) {
        match self.leave {
            Leave::Helper => {
                let helper = std::process::Command::new("sleep").arg("60").spawn();
                self.note(helper.expect("start sleep").id());
            }
            Leave::EscapedHelper => {
                let mut sleep = std::process::Command::new("sleep");
                // SAFETY: setsid is async-signal-safe, as a pre_exec hook must be.
                let helper = unsafe {
                    sleep.arg("60").pre_exec(|| {
                        nix::unistd::setsid()?;
                        Ok(())
                    })
                }
                .spawn();
                self.note(helper.expect("start sleep").id());
            }
            Leave::ForkAndDie => {
                let first = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(self.dir.join("forked"));
                if first.is_err() {
                    return;
                }
                // SAFETY: the child makes one async-signal-safe call (pause) in a loop and
                // never returns into Rust code that could take a lock another thread held.
                match unsafe { nix::unistd::fork() }.expect("fork in the kernel") {
                    nix::unistd::ForkResult::Child => loop {
                        // SAFETY: pause has no preconditions.
                        unsafe { libc::pause() };
                    },
                    nix::unistd::ForkResult::Parent { child } => {
                        self.note(child.as_raw() as u32);
                        let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGKILL);
                    }
                }
            }
        }
    }
}

procpool::enable_test_support!(Registry::builtin().register::<Leaves>());

/// How long a job and the pool's shutdown may take here before the test fails: a few
/// seconds of work on a loaded machine, far less than the helpers' 60 s.
const DEADLINE: Duration = Duration::from_secs(20);

/// The pids noted in `dir`.
fn left_pids(dir: &Path) -> Vec<u32> {
    common::dir_entries(dir)
        .into_iter()
        .filter_map(|name| name.to_str()?.strip_prefix("left.")?.parse().ok())
        .collect()
}

/// Whether `pid` is running (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.get(stat.rfind(')').map_or(0, |i| i + 2)..);
        !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X'))
    })
}

/// Kills whatever the kernels left, so that a failing test leaves nothing running.
fn kill_left(dir: &Path) {
    for pid in left_pids(dir) {
        common::kill(pid);
    }
}

/// Runs `body` (which builds, uses and drops a pool) on another thread; fails the test,
/// after killing what the kernels left in `dir`, if it takes longer than [`DEADLINE`].
fn within(dir: &Path, body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    let outcome = rx.recv_timeout(DEADLINE);
    if outcome.is_err() {
        kill_left(dir);
    }
    match outcome {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the job and the pool's shutdown took longer than {DEADLINE:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the job's thread panicked"),
    }
}

fn run_leaving(dir: &Path, leave: Leave, dispatch: Dispatch) -> procpool::JobStats {
    let workload = Leaves {
        dir: dir.to_path_buf(),
        leave,
    };
    let (tx, rx) = mpsc::channel();
    within(dir, move || {
        let mut pool = Pool::builder()
            .workers(2)
            .test_harness()
            .build()
            .expect("workers through this test binary");
        let options = JobOptions {
            chunk_size: Some(500),
            dispatch,
            ..Default::default()
        };
        let run = pool.run_with(&workload, 20_000, &options).expect("the job");
        let wrong = (0..20_000u64).find(|&i| run.results()[i as usize] != i * i);
        assert_eq!(wrong, None, "{dispatch}: a wrong result");
        let _ = tx.send(run.stats().clone());
        drop(run);
        drop(pool);
    });
    rx.recv().expect("the job's stats")
}

#[test]
fn a_kernels_helper_holding_the_output_pipe_neither_holds_the_pool_nor_outlives_it() {
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let dir = tempfile::tempdir().expect("temp dir");
        run_leaving(dir.path(), Leave::Helper, dispatch);
        let helpers = left_pids(dir.path());
        assert!(
            !helpers.is_empty(),
            "{dispatch}: the kernel noted its helper"
        );
        let gone = wait_until(TEARDOWN_DEADLINE, || !helpers.iter().any(|&p| alive(p)));
        kill_left(dir.path());
        assert!(
            gone,
            "{dispatch}: helpers {helpers:?} outlived their worker"
        );
    }
}

#[test]
fn a_helper_that_left_the_workers_process_group_is_not_waited_for() {
    let dir = tempfile::tempdir().expect("temp dir");
    run_leaving(dir.path(), Leave::EscapedHelper, Dispatch::Queue);
    let helpers = left_pids(dir.path());
    assert!(!helpers.is_empty(), "the kernel noted its helper");
    // It left the group on purpose: procpool neither waited for it nor killed it.
    let still_there = helpers.iter().all(|&p| alive(p));
    kill_left(dir.path());
    assert!(still_there, "helpers {helpers:?} in a session of their own");
}

#[test]
fn a_worker_whose_fork_holds_its_channel_is_still_seen_dead_and_replaced() {
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let dir = tempfile::tempdir().expect("temp dir");
        let stats = run_leaving(dir.path(), Leave::ForkAndDie, dispatch);
        assert_eq!(stats.deaths.len(), 1, "{dispatch}: {:?}", stats.deaths);
        let forks = left_pids(dir.path());
        assert_eq!(forks.len(), 1, "{dispatch}: the kernel noted its fork");
        let gone = wait_until(TEARDOWN_DEADLINE, || !forks.iter().any(|&p| alive(p)));
        kill_left(dir.path());
        assert!(gone, "{dispatch}: the fork {forks:?} outlived its worker");
    }
}

/// Stops (SIGSTOP) every child of process `pid` the moment it appears, until `done`: the
/// way an adversary freezes a worker between its fork and its exec. Returns each stopped
/// pid, and whether it was caught before its exec (its command line still its parent's);
/// `early` counts the latter as they come.
///
/// The window is a few dozen microseconds, so the loop reads only the children of the
/// thread that starts workers (`procpool-spawner`, once it exists), through a descriptor
/// kept open and read again from offset 0.
fn stop_every_child(
    pid: u32,
    done: Arc<AtomicBool>,
    early: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<(u32, bool)>> {
    use std::os::unix::fs::FileExt;
    std::thread::spawn(move || {
        let parent_cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let mut stopped: BTreeMap<u32, bool> = BTreeMap::new();
        let mut watched: Vec<std::fs::File> = Vec::new();
        let mut spawner_found = false;
        let mut buf = [0u8; 4096];
        let mut rounds = 0u32;
        while !done.load(Ordering::SeqCst) {
            if !spawner_found && rounds.is_multiple_of(64) {
                let tasks: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|d| d.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default();
                let spawner = tasks.iter().find(|t| {
                    std::fs::read_to_string(t.join("comm"))
                        .is_ok_and(|c| c.trim() == "procpool-spawner")
                });
                spawner_found = spawner.is_some();
                let chosen = spawner.map_or(tasks.clone(), |t| vec![t.clone()]);
                watched = chosen
                    .iter()
                    .filter_map(|t| std::fs::File::open(t.join("children")).ok())
                    .collect();
            }
            rounds = rounds.wrapping_add(1);
            for file in &watched {
                let Ok(len) = file.read_at(&mut buf, 0) else {
                    // procpool is gone (or its thread): nothing more to stop.
                    if !Path::new(&format!("/proc/{pid}/task")).exists() {
                        return stopped.into_iter().collect();
                    }
                    spawner_found = false;
                    continue;
                };
                let children = String::from_utf8_lossy(&buf[..len]);
                for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                    if stopped.contains_key(&child) {
                        continue;
                    }
                    common::signal(child, Signal::SIGSTOP);
                    let cmdline = std::fs::read(format!("/proc/{child}/cmdline"));
                    let before_exec = cmdline.is_ok_and(|c| c == parent_cmdline);
                    if before_exec {
                        early.fetch_add(1, Ordering::SeqCst);
                    }
                    stopped.insert(child, before_exec);
                }
            }
        }
        stopped.into_iter().collect()
    })
}

/// Runs procpool with `args` while every worker start is frozen as it appears, calling
/// `then(pid, early)` once the freezing began (`early` counts the starts caught before
/// their exec). Each start frozen after its exec times out and is started again, which is
/// one more chance to catch a start before its exec. The job (15 s of waiting on 2
/// workers) outlasts the test's signals even if a start escapes on a loaded machine.
/// Returns the outcome and how many starts were frozen.
fn frozen_starts(args: &[&str], then: impl FnOnce(u32, &AtomicUsize)) -> (common::Outcome, usize) {
    let mut args = args.to_vec();
    // Starts frozen before their exec: spawned workers.
    args.extend_from_slice(&[
        "--start",
        "spawn",
        "--workers",
        "2",
        "sleep",
        "300",
        "--ms",
        "100",
        "--json",
    ]);
    let done = Arc::new(AtomicBool::new(false));
    let mut stopper = None;
    let outcome = Procpool::new(&args).deadline(DEADLINE).run_while(|pid, _| {
        let early = Arc::new(AtomicUsize::new(0));
        stopper = Some(stop_every_child(pid, done.clone(), early.clone()));
        then(pid, &early);
    });
    done.store(true, Ordering::SeqCst);
    let stopped = stopper
        .map(|s| s.join().expect("the stopper"))
        .unwrap_or_default();
    let early = stopped.iter().filter(|s| s.1).count();
    eprintln!(
        "{} starts stopped, {early} before their exec",
        stopped.len()
    );
    (outcome, stopped.len())
}

#[test]
fn workers_frozen_before_their_exec_still_time_out_and_nothing_is_left_stopped() {
    let args = ["--handshake-timeout", "200ms", "--max-restarts", "30"];
    let (outcome, stopped) = frozen_starts(&args, |_, _| {});
    assert_no_tagged_process(&outcome.tag, "after the handshake deadline");
    assert!(stopped > 30, "every start was stopped: {stopped}");
    outcome.assert_code(common::EXIT_FAILED);
    assert!(
        outcome.stderr.contains("did not connect"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn sigterm_ends_procpool_at_once_while_a_start_is_frozen_before_its_exec() {
    let args = ["--handshake-timeout", "300ms", "--max-restarts", "100000"];
    let (outcome, stopped) = frozen_starts(&args, |pid, _| {
        // A few dozen starts, each frozen, before procpool is asked to stop.
        std::thread::sleep(Duration::from_secs(3));
        common::signal(pid, Signal::SIGTERM);
    });
    assert_no_tagged_process(&outcome.tag, "after SIGTERM");
    assert!(stopped > 0, "no start was stopped");
    assert_eq!(outcome.code, Some(143), "{}", outcome.stderr);
}

#[test]
fn a_start_frozen_before_its_exec_does_not_outlive_a_procpool_killed_outright() {
    let args = ["--handshake-timeout", "300ms", "--max-restarts", "100000"];
    let (outcome, stopped) = frozen_starts(&args, |pid, early| {
        // Until a start is caught before its exec (or long enough for a few dozen starts).
        wait_until(Duration::from_secs(10), || early.load(Ordering::SeqCst) > 0);
        // No chance to clean up: what is left must end by itself.
        common::kill(pid);
    });
    assert!(stopped > 0, "no start was stopped");
    assert_eq!(outcome.code, None, "killed by SIGKILL: {}", outcome.stderr);
    assert_no_tagged_process(&outcome.tag, "after procpool was SIGKILLed");
}
