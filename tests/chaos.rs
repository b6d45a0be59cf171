//! The chaos soak: jobs back to back while a random worker is SIGKILLed, SIGSEGVed or
//! SIGSTOPped every 50 ms, workers are stopped or segfaulted the moment they start, and
//! kernels leave children behind.
//!
//! Ignored by default (it runs for a minute); run it with
//! `cargo test --release --test chaos -- --ignored --nocapture`, and set
//! `PROCPOOL_CHAOS_SECS` for another duration (CI runs 10 s).
//!
//! Runs alternate between the two ways of handing out chunks (`--dispatch queue` and
//! `--dispatch channel`), between the three ways of starting workers (`--start spawn`,
//! `fork` and `forkserver`, round-robin), and go through four phases in turn (see
//! [`Phase`]): mixed signals, SIGSTOP at start, SIGSEGV at start, misbehaving kernels.
//! However short the soak, every phase runs once on each path, and each start method twice.
//! The blows fall on workers (and on children kernels leave), never on procpool, and on
//! the fork server only on purpose: every other `forkserver` run, the server gets a
//! SIGSTOP, SIGKILL or SIGSEGV (in turn) at a random moment of the run's first 400 ms, and the pool must
//! reap it and spawn from then on. What it asserts, run after run:
//! - every run verifies, and says it started its workers the way it was asked (a
//!   `forkserver` run whose server was hit may say `spawn`), with the checksum of an undisturbed run (but for a queue run whose
//!   kernel wrote over the control block: that one must fail naming it); the limits are set wide
//!   (`--max-restarts 100000 --retries 1000`), so no death the supervisor can recover from
//!   may fail a job, including workers killed before they connected and replacements
//!   killed during their handshake;
//! - nothing hangs: each run ends within its deadline;
//! - procpool's open descriptors stay bounded while workers die and are replaced;
//! - afterwards no process of ours is left (not even a child a kernel forked), nothing in TMPDIR, nothing new in /dev/shm (the
//!   shared region is an anonymous memfd: it ends with the last process that maps it).
//!
//! A SIGSEGV sent from outside does not always kill a worker at once: the Rust runtime's
//! handler (there to report stack overflows) finds no fault at a guard page, restores the
//! default action and returns, and the worker goes on; the next SIGSEGV kills it.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Sandbox, assert_no_tagged_process, proc_stat, tagged_server, tagged_workers};
use nix::sys::signal::Signal;

const WORKLOAD: [&str; 2] = ["collatz", "2e6"];
const KNOBS: [&str; 14] = [
    "--workers",
    "4",
    "--chunk-size",
    "5000",
    "--timeout",
    "1s",
    "--handshake-timeout",
    "2s",
    "--max-restarts",
    "100000",
    "--retries",
    "1000",
    "--grace",
    "200ms",
];
const KILL_EVERY: Duration = Duration::from_millis(50);
const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// Every phase on both dispatch paths at least once, however short the soak.
const FULL_CYCLE: u64 = 2 * PHASES.len() as u64;
/// The ways of starting workers, one run each in turn.
const STARTS: [&str; 3] = ["spawn", "fork", "forkserver"];
/// How soon after its start a `forkserver` run's server may be hit.
const SERVER_HIT_WITHIN_US: usize = 400_000;

/// What the soak does to one run; runs go through the phases in turn, each phase twice
/// (once per dispatch path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A random worker gets SIGKILL, SIGSEGV or SIGSTOP every 50 ms.
    Mixed,
    /// Half the workers procpool starts get this signal the moment they appear (often
    /// before their exec, sometimes during their handshake), and a random worker is
    /// SIGKILLed every 100 ms so that replacements keep starting.
    AtStart(Signal),
    /// Kernels misbehave: `--inject fork@K` at random chunks leaves children that hold
    /// their worker's output pipes and channel and outlive their chunk, while workers get
    /// mixed signals every 50 ms.
    Misbehaving,
}

const PHASES: [Phase; 4] = [
    Phase::Mixed,
    Phase::AtStart(Signal::SIGSTOP),
    Phase::AtStart(Signal::SIGSEGV),
    Phase::Misbehaving,
];

impl Phase {
    /// Options this phase adds to every run.
    fn knobs(self, dice: &mut Dice) -> Vec<String> {
        match self {
            Phase::Mixed => Vec::new(),
            Phase::AtStart(_) => Vec::new(),
            Phase::Misbehaving => {
                let mut knobs: Vec<String> = (0..3)
                    .flat_map(|_| ["--inject".into(), format!("fork@{}", dice.roll(CHUNKS))])
                    .collect();
                // Every other run, a kernel also writes over the queue's control block.
                if dice.roll(2) == 0 {
                    let action = ["scribble", "wipe"][dice.roll(2)];
                    knobs.extend(["--inject".into(), format!("{action}@{}", dice.roll(CHUNKS))]);
                }
                knobs
            }
        }
    }

    /// Whether a run with these options may fail: a control block written over cannot be
    /// trusted, so the queue stops the job (exit 1, naming the damage); the channel path
    /// has no control block, and a fault on a chunk whose first attempt was lost to a
    /// signal never fires.
    fn may_fail(knobs: &[String], dispatch: &str) -> bool {
        dispatch == "queue"
            && knobs
                .iter()
                .any(|k| k.starts_with("scribble@") || k.starts_with("wipe@"))
    }
}

/// Chunks in the soak's job: `collatz 2e6` in chunks of 5000.
const CHUNKS: usize = 400;

/// The workers `pid` has started and that are still its children.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The oldest of `children`: the fork server, which `init` forks before any worker (and
/// which goes by the program's name for a moment, before it names itself).
fn oldest(children: &[u32]) -> Option<u32> {
    children
        .iter()
        .filter_map(|&pid| proc_stat(pid).map(|stat| (stat.starttime, pid)))
        .min()
        .map(|(_, pid)| pid)
}

/// A small xorshift generator: the soak needs variety, not quality.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }
}

#[derive(Default)]
struct Tally {
    runs: u64,
    verified: u64,
    signals: [AtomicU64; 3],
    restarts: u64,
    deaths_before_connecting: u64,
    chunk_timeouts: u64,
    damage_caught: u64,
    max_fds: usize,
    /// Per start method (as [`STARTS`]): runs, and runs verified.
    per_start: [(u64, u64); 3],
    /// Signals sent to the fork server on purpose, as `signals`.
    server_hits: [u64; 3],
    /// `forkserver` runs whose server was hit before the pool was built, which then spawned.
    spawned_instead: u64,
}

fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

#[test]
#[ignore = "a soak: cargo test --release --test chaos -- --ignored --nocapture"]
fn jobs_survive_workers_killed_stopped_and_segfaulted_every_50ms() {
    let soak = Duration::from_secs(
        std::env::var("PROCPOOL_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let sandbox = Sandbox::new();
    let args_for = |dispatch: &'static str, start: &'static str| -> Vec<&'static str> {
        WORKLOAD
            .iter()
            .chain(KNOBS.iter())
            .chain(["--json", "--dispatch", dispatch, "--start", start].iter())
            .copied()
            .collect()
    };
    let dispatches = ["queue", "channel"];
    let args = args_for("queue", "forkserver");

    // The checksum of an undisturbed run is the answer every disturbed one must give.
    let calm = sandbox.run(&args);
    calm.assert_code(0);
    let expected = calm.json()["checksum"].clone();
    assert_eq!(calm.json()["verified"], true);

    let tally = Tally::default();
    let mut dice = Dice(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1,
    );
    let signals = [Signal::SIGKILL, Signal::SIGSEGV, Signal::SIGSTOP];
    let began = Instant::now();
    let mut tally = tally;
    let mut first_fds = None;
    let mut per_dispatch = [0u64; 2];
    let mut per_phase = [0u64; PHASES.len()];
    while began.elapsed() < soak || tally.runs < FULL_CYCLE {
        let which = tally.runs as usize % 2;
        let phase_index = (tally.runs as usize / 2) % PHASES.len();
        let phase = PHASES[phase_index];
        let start = tally.runs as usize % STARTS.len();
        // Every other forkserver run, the server is hit too.
        let hit_server = STARTS[start] == "forkserver" && tally.per_start[start].0 % 2 == 1;
        per_dispatch[which] += 1;
        per_phase[phase_index] += 1;
        tally.per_start[start].0 += 1;
        let extra = phase.knobs(&mut dice);
        let mut args = args_for(dispatches[which], STARTS[start]);
        args.extend(extra.iter().map(String::as_str));
        if let Phase::AtStart(_) = phase {
            // A worker stopped at its start is given up after its handshake deadline: keep
            // it short, since every other start is stopped.
            let at = args
                .iter()
                .position(|&a| a == "--handshake-timeout")
                .unwrap();
            args[at + 1] = "500ms";
        }
        let out = sandbox
            .command(&args)
            .deadline(RUN_DEADLINE)
            .run_while(|pid, tag| {
                let started = Instant::now();
                // The first blow falls within a few milliseconds, while workers are still
                // starting, now and then before they connect.
                let mut pause = Duration::from_micros(dice.roll(8_000) as u64);
                let mut next_blow = started + pause;
                let mut seen = std::collections::HashSet::new();
                // The server is spared the blows meant for workers.
                let mut server = None;
                let mut server_hit = hit_server.then(|| {
                    started + Duration::from_micros(dice.roll(SERVER_HIT_WITHIN_US) as u64)
                });
                while started.elapsed() < RUN_DEADLINE {
                    if let Some(at) = server_hit
                        && Instant::now() >= at
                        && let Some(target) = tagged_server(tag)
                    {
                        // In turn, SIGSTOP first: the server that never answers.
                        let hits: u64 = tally.server_hits.iter().sum();
                        let k = [2, 0, 1][hits as usize % 3];
                        common::signal(target, signals[k]);
                        tally.server_hits[k] += 1;
                        server_hit = None;
                    }
                    if let Phase::AtStart(at_start) = phase {
                        // Watch for new children closely: a worker is caught within a few
                        // hundred microseconds of its fork, often before its exec.
                        std::thread::sleep(Duration::from_micros(200));
                        let children = children(pid);
                        if server.is_none() {
                            server = oldest(&children);
                        }
                        for child in children {
                            if seen.insert(child) && Some(child) != server && dice.roll(2) == 0 {
                                common::signal(child, at_start);
                                let k = signals.iter().position(|&s| s == at_start).unwrap();
                                tally.signals[k].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if Instant::now() < next_blow {
                            continue;
                        }
                        next_blow = Instant::now() + 2 * KILL_EVERY;
                    } else {
                        std::thread::sleep(pause);
                        pause = KILL_EVERY;
                    }
                    // Workers, and children kernels left: not procpool, not the server.
                    let workers = tagged_workers(tag);
                    // An ended procpool is a zombie until reaped.
                    if common::ended(pid) {
                        return;
                    }
                    if workers.is_empty() {
                        continue;
                    }
                    if let Some(fds) = open_fds(pid) {
                        let first = *first_fds.get_or_insert(fds);
                        tally.max_fds = tally.max_fds.max(fds);
                        // Each worker holds a channel and an output pipe; one starting
                        // holds a report pipe and a connection more. Anything beyond that
                        // is a leak that grows with every restart.
                        assert!(
                            fds <= first + 64,
                            "procpool holds {fds} descriptors, {first} at the start"
                        );
                    }
                    let victim = workers[dice.roll(workers.len())];
                    let k = match phase {
                        Phase::AtStart(_) => 0,
                        _ => dice.roll(signals.len()),
                    };
                    common::signal(victim, signals[k]);
                    tally.signals[k].fetch_add(1, Ordering::Relaxed);
                }
            });
        tally.runs += 1;
        if Phase::may_fail(&extra, dispatches[which]) && out.code == Some(1) {
            assert!(
                out.stderr.contains("control block"),
                "run {} failed, but not because its control block was written over:\n{}",
                tally.runs,
                out.stderr
            );
            tally.damage_caught += 1;
            assert_no_tagged_process(&out.tag, &out.args);
            continue;
        }
        assert_eq!(
            out.code,
            Some(0),
            "run {} ({phase:?}, {}) failed although the limits allow every recovery:\n{}",
            tally.runs,
            dispatches[which],
            out.stderr
        );
        let report = out.json();
        assert_eq!(report["verified"], true, "{}", out.stdout);
        assert_eq!(report["checksum"], expected, "{}", out.stdout);
        if hit_server && report["start"] == "spawn" {
            tally.spawned_instead += 1;
        } else {
            assert_eq!(report["start"], STARTS[start], "{}", out.stdout);
        }
        tally.verified += 1;
        tally.per_start[start].1 += 1;
        tally.restarts += report["restarts"].as_u64().unwrap_or(0);
        for death in report["deaths"].as_array().into_iter().flatten() {
            let cause = death["cause"].as_str().unwrap_or_default();
            if cause.contains("before it connected") || cause.contains("did not connect") {
                tally.deaths_before_connecting += 1;
            }
            if cause.contains("timed out") {
                tally.chunk_timeouts += 1;
            }
        }
        // Workers, and every child a kernel left behind, are gone with the run.
        assert_no_tagged_process(&out.tag, &out.args);
    }
    sandbox.assert_nothing_left_by("no-such-tag", "chaos soak");
    let sent: Vec<u64> = tally
        .signals
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    let starts: Vec<String> = STARTS
        .iter()
        .zip(tally.per_start)
        .map(|(name, (runs, verified))| format!("{name} {runs} ({verified} verified)"))
        .collect();
    eprintln!(
        "chaos soak: {:.0} s, {} runs ({} queue, {} channel; {}; {} mixed, {} SIGSTOP at start, \
         {} SIGSEGV at start, {} misbehaving kernels), {} verified, {} stopped for a control block written over, 0 \
         failed otherwise; signals sent: {} \
         SIGKILL, {} SIGSEGV, {} SIGSTOP; the fork server hit {} times ({} SIGKILL, {} SIGSEGV, \
         {} SIGSTOP; {} runs spawned their workers instead); {} restarts ({} before the worker connected, {} \
         chunk timeouts); procpool held at most {} descriptors",
        began.elapsed().as_secs_f64(),
        tally.runs,
        per_dispatch[0],
        per_dispatch[1],
        starts.join(", "),
        per_phase[0],
        per_phase[1],
        per_phase[2],
        per_phase[3],
        tally.verified,
        tally.damage_caught,
        sent[0],
        sent[1],
        sent[2],
        tally.server_hits.iter().sum::<u64>(),
        tally.server_hits[0],
        tally.server_hits[1],
        tally.server_hits[2],
        tally.spawned_instead,
        tally.restarts,
        tally.deaths_before_connecting,
        tally.chunk_timeouts,
        tally.max_fds,
    );
}
