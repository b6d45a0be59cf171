//! The fork server, with real processes through the `procpool` binary: one server a program,
//! single-threaded, leading its own process group, a child of procpool; workers that are
//! procpool's own children, named `procpool-w<id>`, replaced through the server while the
//! pool has threads; a server stopped or killed that the pool reaps and replaces by spawning;
//! and a program SIGKILLed, or one that never builds a pool, that leaves nothing behind.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{
    EXIT_OK, EXIT_USAGE, SERVER_COMM, Sandbox, assert_no_tagged_process, ended, proc_stat, signal,
    tagged_processes, tagged_server, thread_count, wait_until,
};
use nix::sys::signal::Signal;

/// The hidden argument a spawned worker runs with: a forked one has none.
const SPAWNED_ARG: &str = "__procpool_worker";

/// How long a test waits for something procpool does within milliseconds (a loaded 2-core
/// machine, a debug build): only a hang takes this long.
const SOON: Duration = Duration::from_secs(30);

/// A tagged process as one look at `/proc` saw it.
#[derive(Debug, Clone)]
struct Seen {
    pid: u32,
    comm: String,
    ppid: u32,
    pgrp: u32,
    threads: usize,
    cmdline: String,
}

/// Every process of the run tagged `tag` but procpool itself (`pool`).
fn look(tag: &str, pool: u32) -> Vec<Seen> {
    tagged_processes(tag)
        .into_iter()
        .filter(|&(pid, _)| pid != pool)
        .filter_map(|(pid, cmdline)| {
            let stat = proc_stat(pid)?;
            Some(Seen {
                pid,
                comm: stat.comm,
                ppid: stat.ppid,
                pgrp: stat.pgrp,
                threads: thread_count(pid)?,
                cmdline,
            })
        })
        .collect()
}

/// The worker id in a forked worker's name, `procpool-w<id>`.
fn worker_id(comm: &str) -> Option<usize> {
    comm.strip_prefix("procpool-w")?.parse().ok()
}

/// Whether worker `pid` serves: it has mapped the shared region, which it does before it
/// takes its first job.
fn serving(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|maps| maps.contains("procpool-results"))
}

/// Waits until forked workers `0..count` serve; their pids by id.
fn wait_for_forked_workers(tag: &str, pool: u32, count: usize) -> BTreeMap<usize, u32> {
    let mut found = BTreeMap::new();
    let ok = wait_until(SOON, || {
        found = look(tag, pool)
            .into_iter()
            .filter_map(|p| Some((worker_id(&p.comm)?, p.pid)))
            .filter(|&(_, pid)| serving(pid))
            .collect();
        found.len() >= count
    });
    assert!(ok, "only {found:?} of {count} forked workers serve");
    found
}

/// Watches a run until procpool ends: every process named like the server, with when it
/// was first and last seen so named, and every process seen with a worker's name.
#[derive(Default)]
struct Watch {
    /// pid → (first, last) time seen named [`SERVER_COMM`], and each look at it.
    named_server: BTreeMap<u32, (Instant, Instant, Vec<Seen>)>,
    /// pid → each look at a process named `procpool-w<id>`.
    workers: BTreeMap<u32, Vec<Seen>>,
    /// Processes that were neither: a spawned worker, or anything else.
    others: Vec<Seen>,
    /// Looks taken.
    looks: usize,
}

impl Watch {
    fn run(tag: &str, pool: u32) -> Watch {
        let mut watch = Watch::default();
        let began = Instant::now();
        while !ended(pool) && began.elapsed() < common::RUN_DEADLINE {
            let now = Instant::now();
            let seen = look(tag, pool);
            // Once procpool has ended its server is an orphan for a moment: not a look at
            // the running program.
            if ended(pool) {
                break;
            }
            for seen in seen {
                if seen.comm == SERVER_COMM {
                    let entry =
                        watch
                            .named_server
                            .entry(seen.pid)
                            .or_insert((now, now, Vec::new()));
                    entry.1 = now;
                    entry.2.push(seen);
                } else if worker_id(&seen.comm).is_some() {
                    watch.workers.entry(seen.pid).or_default().push(seen);
                } else {
                    watch.others.push(seen);
                }
            }
            watch.looks += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        watch
    }

    /// Processes seen that were neither the server nor a forked worker (the server goes by
    /// the program's name for a moment after its fork: that is not one).
    fn strangers(&self) -> Vec<&Seen> {
        self.others
            .iter()
            .filter(|s| !self.named_server.contains_key(&s.pid))
            .collect()
    }

    /// The processes named like the server for at least `lasting`: servers, not a worker
    /// just forked that has yet to name itself.
    fn servers(&self, lasting: Duration) -> Vec<(u32, &[Seen])> {
        self.named_server
            .iter()
            .filter(|(_, (first, last, _))| *last - *first >= lasting)
            .map(|(&pid, (_, _, looks))| (pid, looks.as_slice()))
            .collect()
    }
}

/// Checks what `Watch` saw of a run whose workers all came from the fork server: one server,
/// a single-threaded child of procpool leading its own group; every worker procpool's child,
/// forked (no hidden argument); nothing else.
fn assert_one_server_and_forked_children(watch: &Watch, pool: u32, what: &str) {
    let servers = watch.servers(Duration::from_millis(300));
    assert_eq!(
        servers.len(),
        1,
        "{what}: expected one fork server over {} looks, saw {:?}",
        watch.looks,
        watch.named_server.keys().collect::<Vec<_>>()
    );
    let (server, looks) = servers[0];
    for seen in looks {
        assert_eq!(
            seen.ppid, pool,
            "{what}: the server is not procpool's child: {seen:?}"
        );
        assert_eq!(seen.threads, 1, "{what}: the server has threads: {seen:?}");
        assert_eq!(
            seen.pgrp, server,
            "{what}: the server does not lead its own process group: {seen:?}"
        );
        assert!(!seen.cmdline.contains(SPAWNED_ARG), "{what}: {seen:?}");
    }
    assert!(!watch.workers.is_empty(), "{what}: no forked worker seen");
    for seen in watch.workers.values().flatten() {
        assert_eq!(
            seen.ppid, pool,
            "{what}: a worker is not procpool's child: {seen:?}"
        );
        assert!(
            !seen.cmdline.contains(SPAWNED_ARG),
            "{what}: a worker named like a forked one was spawned: {seen:?}"
        );
    }
    assert!(
        watch.strangers().is_empty(),
        "{what}: processes that are neither the server nor a forked worker: {:?}",
        watch.strangers()
    );
}

#[test]
fn one_single_threaded_server_a_program_and_every_worker_is_procpools_forked_child() {
    // Workers killed from inside three times: each replacement comes from the server too.
    let sandbox = Sandbox::new();
    let mut watch = Watch::default();
    let mut pool = 0;
    let out = sandbox
        .command(&[
            "--workers",
            "3",
            "sleep",
            "150",
            "--ms",
            "40",
            "--inject",
            "kill@3",
            "--inject",
            "kill@40",
            "--inject",
            "kill@90",
            "--json",
        ])
        .run_while(|pid, tag| {
            pool = pid;
            watch = Watch::run(tag, pid);
        });
    out.assert_code(EXIT_OK);
    let report = out.json();
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["start"], "forkserver", "{report}");
    assert_eq!(report["restarts"], 3, "{report}");
    assert_one_server_and_forked_children(&watch, pool, &out.args);
    // Each replacement was seen (they live to the end), named after the worker it replaced.
    for death in report["deaths"].as_array().expect("deaths") {
        let id = death["id"].as_u64().expect("a worker id") as usize;
        let new = death["replaced_by"].as_u64().expect("a replacement") as u32;
        let looks = watch
            .workers
            .get(&new)
            .unwrap_or_else(|| panic!("replacement {new} never seen: {death}"));
        assert!(
            looks.iter().all(|s| worker_id(&s.comm) == Some(id)),
            "{death}: {looks:?}"
        );
    }
    sandbox.assert_nothing_left(&out);
}

#[test]
fn pools_built_one_after_another_share_the_one_server() {
    // `sweep` builds a pool for each worker count, in one program.
    let sandbox = Sandbox::new();
    let mut watch = Watch::default();
    let mut pool = 0;
    let out = sandbox
        .command(&["sweep", "--workers", "1,2,3", "sleep", "60", "--ms", "40"])
        .run_while(|pid, tag| {
            pool = pid;
            watch = Watch::run(tag, pid);
        });
    out.assert_code(EXIT_OK);
    assert_one_server_and_forked_children(&watch, pool, &out.args);
    // Three pools one after another (1, 2 and 3 workers), all from that server. The
    // watch looks every few milliseconds, but a loaded machine may make it miss a
    // worker: more workers than the largest pool has is enough to show two pools.
    let ids: BTreeSet<usize> = watch
        .workers
        .values()
        .flatten()
        .filter_map(|s| worker_id(&s.comm))
        .collect();
    assert_eq!(ids, BTreeSet::from([0, 1, 2]), "{}", out.args);
    assert!(
        watch.workers.len() > 3,
        "{}: only {} workers seen",
        out.args,
        watch.workers.len()
    );
    sandbox.assert_nothing_left(&out);
}

#[test]
fn a_worker_sigkilled_from_outside_is_replaced_through_the_server_while_the_pool_has_threads() {
    let sandbox = Sandbox::new();
    let mut replacement = None;
    let mut victim = 0;
    let out = sandbox
        .command(&["--workers", "2", "sleep", "100", "--ms", "40", "--json"])
        .run_while(|pid, tag| {
            let workers = wait_for_forked_workers(tag, pid, 2);
            // The pool has threads of its own by now: `fork` could not make this
            // replacement, and `spawn` would execute the binary again.
            let threads = thread_count(pid).unwrap_or(0);
            assert!(threads > 1, "procpool has {threads} threads");
            victim = workers[&1];
            signal(victim, Signal::SIGKILL);
            let ok = wait_until(SOON, || {
                replacement = look(tag, pid)
                    .into_iter()
                    .find(|p| p.pid != victim && worker_id(&p.comm) == Some(1));
                replacement.is_some() || ended(pid)
            });
            assert!(ok, "no replacement for worker 1 within {SOON:?}");
        });
    out.assert_code(EXIT_OK);
    let report = out.json();
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["start"], "forkserver", "{report}");
    assert_eq!(report["restarts"], 1, "{report}");
    let new = replacement.unwrap_or_else(|| panic!("the run ended before a replacement: {report}"));
    let death = &report["deaths"][0];
    assert_eq!(death["id"], 1, "{death}");
    assert_eq!(death["pid"], victim, "{death}");
    assert_eq!(death["replaced_by"], new.pid, "{death}");
    assert!(
        death["cause"].as_str().unwrap_or("").contains("SIGKILL"),
        "{death}"
    );
    let pool = report["per_worker"]
        .as_array()
        .expect("per_worker")
        .iter()
        .any(|w| w["pid"] == new.pid);
    assert!(pool, "the replacement took no part in the run: {report}");
    // Forked by the server, yet procpool's child: no exec, no hidden argument.
    assert_eq!(new.comm, "procpool-w1", "{new:?}");
    assert!(!new.cmdline.contains(SPAWNED_ARG), "{new:?}");
    sandbox.assert_nothing_left(&out);
}

#[test]
fn procpool_sigkilled_mid_run_takes_the_server_and_every_worker_with_it() {
    let sandbox = Sandbox::new();
    let mut pool = 0;
    let out = sandbox
        .command(&["--workers", "3", "sleep", "1000", "--ms", "50"])
        .run_while(|pid, tag| {
            pool = pid;
            wait_for_forked_workers(tag, pid, 3);
            let server = tagged_server(tag);
            assert!(server.is_some(), "no fork server: {:?}", look(tag, pid));
            signal(pid, Signal::SIGKILL);
            // The server and the workers die with procpool's main thread, not later.
            assert_no_tagged_process(tag, "procpool SIGKILLed mid-run");
        });
    assert_eq!(out.code, None, "procpool was not killed: {}", out.stderr);
    // The one thing a SIGKILLed procpool leaves is its pool's private directory, which
    // the next procpool here sweeps away: nothing of the server's, nothing in /dev/shm.
    let left = common::dir_entries(sandbox.tmpdir());
    let ours = format!("procpool-{pool}-");
    assert!(
        left.iter()
            .all(|name| name.to_string_lossy().starts_with(&ours)),
        "left {left:?} in TMPDIR"
    );
    sandbox.assert_swept_after_sudden_death(&out.tag, &out.args);
}

/// The server gets `sig` before any replacement is needed; then a worker is SIGKILLed from
/// outside. The pool finds the server gone or stopped, reaps it, and spawns the
/// replacement, which appears within `within` of the kill (the handshake timeout is a
/// minute: a pool that waited for it to pass would not make it); the run verifies.
fn a_server_gone_before_a_replacement_is_reaped_and_the_pool_spawns(sig: Signal) {
    // Far below the handshake timeout, far above a spawn on a loaded machine.
    let within = Duration::from_secs(15);
    let sandbox = Sandbox::new();
    let mut replacement = None;
    let mut server = 0;
    let mut pool = 0;
    let out = sandbox
        .command(&[
            "--workers",
            "2",
            "--handshake-timeout",
            "60s",
            "sleep",
            "100",
            "--ms",
            "40",
            "--json",
        ])
        .run_while(|pid, tag| {
            pool = pid;
            let workers = wait_for_forked_workers(tag, pid, 2);
            server = tagged_server(tag).expect("a fork server");
            signal(server, sig);
            if sig == Signal::SIGSTOP {
                let stopped =
                    wait_until(SOON, || proc_stat(server).is_some_and(|s| s.state == 'T'));
                assert!(stopped, "the server did not stop");
            }
            signal(workers[&1], Signal::SIGKILL);
            let ok = wait_until(within, || {
                replacement = look(tag, pid)
                    .into_iter()
                    .find(|p| p.cmdline.contains(SPAWNED_ARG));
                replacement.is_some() || ended(pid)
            });
            assert!(ok, "no spawned replacement within {within:?}");
            // The pool reaped the server it gave up on: no zombie, no stopped process.
            let reaped = wait_until(SOON, || proc_stat(server).is_none() || ended(pid));
            assert!(
                reaped,
                "the server {server} is still there: {:?}",
                proc_stat(server)
            );
        });
    out.assert_code(EXIT_OK);
    let report = out.json();
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["restarts"], 1, "{report}");
    let new = replacement.unwrap_or_else(|| panic!("the run ended before a replacement: {report}"));
    assert_eq!(report["deaths"][0]["replaced_by"], new.pid, "{report}");
    assert_eq!(
        new.ppid, pool,
        "the replacement is not procpool's child: {new:?}"
    );
    sandbox.assert_nothing_left(&out);
}

#[test]
fn a_server_stopped_before_a_replacement_is_reaped_and_the_pool_spawns() {
    a_server_gone_before_a_replacement_is_reaped_and_the_pool_spawns(Signal::SIGSTOP);
}

#[test]
fn a_server_killed_before_a_replacement_is_reaped_and_the_pool_spawns() {
    a_server_gone_before_a_replacement_is_reaped_and_the_pool_spawns(Signal::SIGKILL);
}

#[test]
fn a_stopped_server_no_pool_asks_dies_with_the_program() {
    let sandbox = Sandbox::new();
    let mut server = None;
    let out = sandbox
        .command(&["--workers", "2", "sleep", "40", "--ms", "40", "--json"])
        .run_while(|pid, tag| {
            wait_for_forked_workers(tag, pid, 2);
            server = tagged_server(tag);
            signal(server.expect("a fork server"), Signal::SIGSTOP);
        });
    out.assert_code(EXIT_OK);
    assert_eq!(out.json()["verified"], true, "{}", out.stdout);
    assert!(server.is_some());
    sandbox.assert_nothing_left(&out);
}

#[test]
fn a_program_that_builds_no_pool_leaves_no_process() {
    let sandbox = Sandbox::new();
    for args in [
        &["--help"][..],
        &["--version"],
        &["list"],
        &["squares", "--help"],
    ] {
        let out = sandbox.run(args);
        out.assert_code(EXIT_OK);
        sandbox.assert_nothing_left(&out);
    }
    // Bad input: refused before any pool, and the server goes too.
    let out = sandbox.run(&["--workers", "0", "squares", "10"]);
    out.assert_code(EXIT_USAGE);
    sandbox.assert_nothing_left(&out);
}

#[test]
fn without_a_pool_the_server_waits_alone_and_dies_with_the_program() {
    // One process and threads build no pool: the server is there all the same (`init`
    // forks it first thing), alone, and ends with the program.
    for mode in ["single", "threads"] {
        let sandbox = Sandbox::new();
        let mut watch = Watch::default();
        let mut args = vec!["--mode", mode];
        if mode == "threads" {
            args.extend(["--workers", "2"]);
        }
        args.extend(["sleep", "30", "--ms", "40", "--json"]);
        let out = sandbox.command(&args).run_while(|pid, tag| {
            watch = Watch::run(tag, pid);
        });
        out.assert_code(EXIT_OK);
        assert_eq!(out.json()["verified"], true, "{}", out.stdout);
        let servers = watch.servers(Duration::from_millis(300));
        assert_eq!(servers.len(), 1, "{}: {:?}", out.args, watch.named_server);
        assert!(
            watch.workers.is_empty() && watch.strangers().is_empty(),
            "{}: a worker in a run without a pool: {:?} {:?}",
            out.args,
            watch.workers,
            watch.strangers()
        );
        sandbox.assert_nothing_left(&out);
    }
}

#[test]
fn spawn_is_still_chosen_with_start_spawn_and_its_workers_exec() {
    // Spawned workers run the binary again with the hidden argument; the server is there
    // but forks nothing.
    let sandbox = Sandbox::new();
    let mut watch = Watch::default();
    let out = sandbox
        .command(&[
            "--workers",
            "2",
            "--start",
            "spawn",
            "sleep",
            "40",
            "--ms",
            "40",
            "--json",
        ])
        .run_while(|pid, tag| {
            watch = Watch::run(tag, pid);
        });
    out.assert_code(EXIT_OK);
    let report = out.json();
    assert_eq!(report["verified"], true, "{report}");
    assert_eq!(report["start"], "spawn", "{report}");
    assert!(watch.workers.is_empty(), "{:?}", watch.workers);
    let spawned: BTreeSet<u32> = watch
        .others
        .iter()
        .filter(|s| s.cmdline.contains(SPAWNED_ARG))
        .map(|s| s.pid)
        .collect();
    assert_eq!(spawned.len(), 2, "{:?}", watch.others);
    sandbox.assert_nothing_left(&out);
}

/// A kernel that says which chunk it runs on stdout, one line per chunk, and leaves an
/// unfinished line on stderr on the last chunk: every worker's output reaches the pool's
/// stderr, one `[worker N] line` at a time, and the unfinished line too once the worker
/// ends.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Chatty {
    last: u64,
}

impl procpool::Workload for Chatty {
    const NAME: &'static str = "chatty";
    type Output = u64;

    fn kernel(&self, range: std::ops::Range<u64>, out: &mut [u64]) {
        println!("chunk {} done", range.start);
        if range.start == self.last {
            eprint!("unfinished {}", range.start);
        }
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = i;
        }
    }
}

procpool::enable_test_support!(procpool::Registry::builtin().register::<Chatty>());

/// Set for the run of [`chatty_pool`] that [`every_workers_output_reaches_our_stderr_line_by_line`]
/// starts, with the workers' count.
const CHATTY_ENV: &str = "PROCPOOL_TEST_CHATTY_WORKERS";
const CHATTY_CHUNKS: u64 = 64;

/// Runs only inside [`every_workers_output_reaches_our_stderr_line_by_line`]'s child.
#[test]
#[ignore = "run by every_workers_output_reaches_our_stderr_line_by_line"]
fn chatty_pool() {
    let Some(workers) = std::env::var(CHATTY_ENV).ok().and_then(|w| w.parse().ok()) else {
        return;
    };
    let mut pool = procpool::Pool::builder()
        .workers(workers)
        .test_harness()
        .build()
        .expect("a pool");
    assert_eq!(pool.start_method(), procpool::StartMethod::ForkServer);
    let options = procpool::JobOptions {
        chunk_size: Some(100),
        ..procpool::JobOptions::default()
    };
    let chatty = Chatty {
        last: (CHATTY_CHUNKS - 1) * 100,
    };
    let run = pool
        .run_with(&chatty, CHATTY_CHUNKS * 100, &options)
        .expect("the job");
    assert!(run.results().iter().zip(0..).all(|(&r, i)| r == i));
    drop(run);
    pool.shutdown();
}

#[test]
fn every_workers_output_reaches_our_stderr_line_by_line() {
    let workers = 8;
    let mut child = std::process::Command::new(std::env::current_exe().expect("this test"))
        .args(["--exact", "chatty_pool", "--ignored", "--nocapture"])
        .env(CHATTY_ENV, workers.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the test binary");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut all);
        all
    });
    let status = common::wait_child(&mut child, SOON);
    let stderr = reader.join().expect("the reader");
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {stderr}");
    let mut chunks = BTreeSet::new();
    let mut unfinished = Vec::new();
    for line in stderr.lines().filter(|l| l.starts_with("[worker ")) {
        let (worker, said) = line["[worker ".len()..]
            .split_once("] ")
            .unwrap_or_else(|| panic!("a prefixed line: {line:?}"));
        let worker: usize = worker.parse().expect("a worker id");
        assert!(worker < workers, "{line}");
        if let Some(start) = said
            .strip_prefix("chunk ")
            .and_then(|s| s.strip_suffix(" done"))
        {
            assert!(
                chunks.insert(start.parse::<u64>().expect("a chunk")),
                "{line}"
            );
        } else {
            unfinished.push(said.to_string());
        }
    }
    let all: BTreeSet<u64> = (0..CHATTY_CHUNKS).map(|c| c * 100).collect();
    assert_eq!(chunks, all, "every chunk's line, whole, once: {stderr}");
    assert_eq!(
        unfinished,
        [format!("unfinished {}", (CHATTY_CHUNKS - 1) * 100)],
        "{stderr}"
    );
}

/// An MPI run (`--backend mpi --ranks 3`): the launcher ends the fork server `init` started
/// before it starts mpirun, and no rank starts one: none is there while mpirun runs.
#[cfg(feature = "mpi")]
#[test]
fn an_mpi_run_has_no_fork_server_while_mpirun_runs() {
    let sandbox = Sandbox::new();
    let (mut looks_with_mpirun, mut servers) = (0, BTreeSet::new());
    let out = sandbox
        .command(&[
            "--backend",
            "mpi",
            "--ranks",
            "3",
            "sleep",
            "40",
            "--ms",
            "40",
            "--json",
        ])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .run_while(|pid, tag| {
            let began = Instant::now();
            while !ended(pid) && began.elapsed() < common::RUN_DEADLINE {
                let seen = look(tag, pid);
                if seen.iter().any(|s| s.comm == "mpirun") {
                    looks_with_mpirun += 1;
                    servers.extend(
                        seen.iter()
                            .filter(|s| s.comm == SERVER_COMM)
                            .map(|s| (s.pid, s.ppid)),
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    out.assert_code(EXIT_OK);
    assert_eq!(out.json()["verified"], true);
    assert!(looks_with_mpirun > 0, "mpirun was never seen");
    assert!(
        servers.is_empty(),
        "fork servers (pid, parent): {servers:?}"
    );
    sandbox.assert_nothing_left(&out);
}
