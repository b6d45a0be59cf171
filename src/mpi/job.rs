//! One MPI run: the ranks find their nodes, rank 0 sends the job, the ranks on its node map
//! the shared window, then rank 0 hands out chunks and the workers compute them until rank
//! 0, having verified every round, says stop.

use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;

use super::launch::record_phase;
use super::window::{Windows, WindowsError};
use super::wire::{self, Backoff, Done, Failed, Header};
use super::{MpiOptions, MpiReport, ResultRoute};
use crate::engine::fault::FaultAction;
use crate::engine::interrupt::Interrupt;
use crate::engine::pool::ReducedChunk;
use crate::engine::pool::WorkerStats;
use crate::engine::schedule::{Chunk, Dispenser};
use crate::error::{Error, Phase, Result};
use crate::lab::baseline::{checksum_until, compare, run_single};
use crate::lab::meta::Meta;
use crate::lab::model::Report;
use crate::lab::options::{Runner, first_refused};
use crate::lab::run::{
    Round, build_report, check_element, combine_round, in_process_stats, options_set, reduce_like,
};
use crate::workload::ChunkReducer;
use crate::workload::Workload;

/// Where this rank is.
struct Place {
    world: SimpleCommunicator,
    node: SimpleCommunicator,
    rank: usize,
    ranks: usize,
    /// The world rank of the first rank of this rank's node.
    node_id: usize,
}

impl Place {
    fn on_root_node(&self) -> bool {
        self.node_id == 0
    }
}

fn locate(universe: &Universe, node_size: Option<usize>) -> Place {
    let world = universe.world();
    let rank = world.rank() as usize;
    let ranks = world.size() as usize;
    // The ranks that share memory; with `node_size`, cut into blocks of that many ranks
    // within them (a block never spans two real nodes, which could share no window).
    let shared = world.split_shared(rank as i32);
    let node = match node_size {
        Some(size) => shared
            .split_by_color(Color::with_value((rank / size.max(1)) as i32))
            .expect("every rank has a color"),
        None => shared,
    };
    let mut first = 0i32;
    node.all_reduce_into(&(rank as i32), &mut first, SystemOperation::min());
    Place {
        world,
        node,
        rank,
        ranks,
        node_id: first as usize,
    }
}

/// Receives the next message from `from` (any rank when `None`) with tag `tag` (any when
/// `None`), probing with back-off; `None` when `interrupt` asks to stop first.
fn receive(
    world: &SimpleCommunicator,
    from: Option<usize>,
    backoff: &mut Backoff,
    interrupt: Option<&Interrupt>,
) -> Option<(Vec<u8>, usize, i32)> {
    loop {
        let probe = match from {
            Some(r) => world.process_at_rank(r as i32).immediate_matched_probe(),
            None => world.any_process().immediate_matched_probe(),
        };
        if let Some(matched) = probe {
            backoff.hit();
            let (bytes, status) = matched.matched_receive_vec::<u8>();
            return Some((bytes, status.source_rank() as usize, status.tag()));
        }
        if interrupt.is_some_and(|i| i.requested().is_some()) {
            return None;
        }
        backoff.wait();
    }
}

fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .collect()
}

fn to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Builds the reducer of a workload that reduces ([`crate::Reduce`]); the MPI run takes it
/// as a plain function so that it stays generic over any [`Workload`].
pub(super) type MakeReducer<W> = fn(&W) -> Box<dyn ChunkReducer<<W as Workload>::Output> + '_>;

/// Whether an error leaves the ranks out of step: the job was stopped from outside (a
/// signal, a rank lost), or a rank broke the protocol (an unexpected message, a failed MPI
/// call), so others may wait for messages that never come. No collective call can be
/// trusted to finish then: the windows and MPI are left unfreed and the process should
/// exit, which makes mpirun stop every other rank. (A kernel panic is not such an error:
/// rank 0 collects every chunk still out and all ranks finish together.)
pub(super) fn stopped(e: &Error) -> bool {
    e.interrupted_by().is_some() || matches!(e, Error::RankLost { .. } | Error::Ipc(_))
}

pub(super) fn run<W: Workload + DeserializeOwned>(
    universe: &Universe,
    workload: &W,
    n: u64,
    options: &MpiOptions,
    mca_set: Vec<String>,
    reducer: Option<MakeReducer<W>>,
    init: Instant,
) -> Result<Option<Report>> {
    let place = locate(universe, options.node_size);
    if place.rank == 0 {
        root(place, workload, n, options, mca_set, reducer, init).map(Some)
    } else {
        worker::<W>(place, &options.run.pool.supervision.interrupt, reducer)?;
        Ok(None)
    }
}

/// What rank 0 knows of a worker rank.
struct Rank {
    pid: u32,
    node: usize,
    host: String,
    /// The process's start time (clock ticks since boot), to tell it from a later process
    /// with the same pid.
    started: u64,
}

impl Rank {
    /// Whether this rank's process is gone: on rank 0's host, its pid names no process, a
    /// zombie, or a process that started at another time. Ranks on other hosts cannot be
    /// looked at from here (`false`).
    fn lost(&self, host: &str) -> bool {
        self.host == host
            && crate::engine::sys::process_started(self.pid)
                .is_none_or(|(started, zombie)| zombie || started != self.started)
    }
}

/// The error for a stop (a signal from mpirun or the user): a rank lost on this host, with
/// the chunk it was running (the first of its chunks still out), if one is, and what the
/// job was doing; else `e`.
fn lost_or(e: Error, ranks: &[Rank], pending: &HashMap<u64, (Chunk, usize, Instant)>) -> Error {
    let Error::Interrupted { phase, .. } = e else {
        return e;
    };
    let Some((rank, r)) = ranks
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, r)| r.lost(&ranks[0].host))
    else {
        return e;
    };
    let chunk = pending
        .values()
        .filter(|(_, to, _)| *to == rank)
        .min_by_key(|(_, _, sent)| *sent)
        .map(|(c, _, _)| (c.id, c.start, c.end));
    Error::RankLost {
        rank,
        pid: r.pid,
        host: r.host.clone(),
        chunk,
        during: Some(phase),
    }
}

fn refusal<W: Workload + DeserializeOwned>(
    workload: &W,
    n: u64,
    options: &MpiOptions,
    ranks: usize,
) -> Result<()> {
    let run = &options.run;
    if ranks < 2 {
        return Err(Error::invalid(
            "backend",
            format!(
                "the mpi backend needs at least 2 ranks (rank 0 and a worker), got {ranks}: start it with `mpirun -np K` and K ≥ 2"
            ),
        ));
    }
    // What the backend takes, from the one table of options (`lab::options`).
    if let Some(refusal) = first_refused(Runner::Mpi, options_set(run)) {
        return Err(refusal);
    }
    // A cancel token has no flag, so no row in the table.
    if run.job.cancel.is_some() {
        return Err(Error::invalid(
            "cancel",
            "the mpi backend has no per-job `cancel`: use the process backend",
        ));
    }
    if let Some(f) = run.job.faults.iter().find(|f| {
        matches!(
            f.action,
            FaultAction::Hang | FaultAction::Fork | FaultAction::Scribble | FaultAction::Wipe
        )
    }) {
        let why = match f.action {
            FaultAction::Hang => {
                "a hung rank would hang the MPI job, which has no chunk time limit \
                 (`chunk_timeout`)"
            }
            FaultAction::Fork => {
                "a rank's stray child would outlive the MPI job, whose ranks mpirun starts"
            }
            _ => "the MPI job has no shared queue to overwrite",
        };
        return Err(Error::invalid(
            "faults",
            format!(
                "`faults` {f}: {why}: inject kill, abort, segv, exit, panic or corrupt, or use \
                 the process backend"
            ),
        ));
    }
    if run.repeat == 0 {
        return Err(Error::invalid(
            "repeat",
            "`repeat` must be at least 1 (got 0)",
        ));
    }
    crate::engine::pool::check_counts(ranks - 1, run.pool.inflight, run.job.chunk_size)?;
    if let Some(last) = run.job.faults.iter().map(|f| f.chunk).max() {
        let chunks = dispenser::<W>(n, ranks - 1, options).chunks_up_to(last);
        crate::engine::fault::check_faults(&run.job.faults, chunks)?;
    }
    check_element::<W>(workload)?;
    let bytes = n as u128 * std::mem::size_of::<W::Output>() as u128;
    let mut parts = vec![("shared window", bytes)];
    if run.baseline {
        parts.push(("single-process baseline", bytes));
    }
    crate::engine::limits::check_memory(
        &format!("{} with n = {n}", W::NAME),
        &parts,
        &crate::engine::limits::Machine::read(),
    )?;
    if let Some(free) = super::dev_shm_free()
        && let Some(why) = super::shm_refusal(free, bytes as u64)
    {
        return Err(Error::invalid_input(why));
    }
    Ok(())
}

/// How a round's chunks are cut and handed out to `workers` worker ranks.
fn dispenser<W: Workload + DeserializeOwned>(
    n: u64,
    workers: usize,
    options: &MpiOptions,
) -> Dispenser {
    let job = &options.run.job;
    let chunk_size = job
        .chunk_size
        .or_else(|| W::WAITS.then(|| crate::engine::schedule::waiting_chunk_size(n, workers)));
    Dispenser::new(job.schedule, n, workers, chunk_size)
}

fn root<W: Workload + DeserializeOwned>(
    place: Place,
    workload: &W,
    n: u64,
    options: &MpiOptions,
    mca_set: Vec<String>,
    make_reducer: Option<MakeReducer<W>>,
    init: Instant,
) -> Result<Report> {
    let started = std::time::SystemTime::now();
    let machine = crate::engine::limits::Machine::read();
    let mut backoff = Backoff::default();
    // Every worker says where it is.
    let host = mpi::environment::processor_name().unwrap_or_default();
    let me = std::process::id();
    let mut ranks: Vec<Rank> = (0..place.ranks)
        .map(|_| Rank {
            pid: me,
            node: 0,
            host: host.clone(),
            started: crate::engine::sys::process_started(me).map_or(0, |(s, _)| s),
        })
        .collect();
    for _ in 1..place.ranks {
        let (bytes, from, _) = receive_tag(&place.world, None, wire::TAG_HELLO, &mut backoff);
        if bytes.len() < 24 {
            return Err(Error::Ipc(format!("rank {from} sent a short hello")));
        }
        let w = words(&bytes[..24]);
        ranks[from] = Rank {
            pid: w[0] as u32,
            node: w[1] as usize,
            started: w[2],
            host: String::from_utf8_lossy(&bytes[24..]).into_owned(),
        };
    }
    // Starting: from just before this rank's MPI_Init until every worker rank said where
    // it is (mpirun's own start before that is in `launch_s`).
    let spawn = init.elapsed();
    super::launch::record_ranks(
        ranks
            .iter()
            .map(|r| (r.pid, r.started, r.host.clone()))
            .collect(),
    );
    // What a killed job left in /dev/shm goes before this job adds its own files' worth.
    let stale = super::remove_stale_segments();
    let refused = refusal(workload, n, options, place.ranks);
    let elem = std::mem::size_of::<W::Output>();
    // Results cross nodes by MPI_Put only when some worker is on another node.
    let put = options.route == ResultRoute::Put && ranks.iter().any(|r| r.node != 0);
    let header = Header {
        n,
        elem_size: elem as u64,
        name: W::NAME.to_string(),
        params: postcard::to_stdvec(workload).map_err(|e| Error::Ipc(e.to_string()))?,
        refused: refused.as_ref().err().map(|e| e.to_string()),
        reduce: make_reducer.is_some(),
        faults: options.run.job.faults.clone(),
        put,
    };
    let header_bytes = postcard::to_stdvec(&header).map_err(|e| Error::Ipc(e.to_string()))?;
    for r in 1..place.ranks {
        place
            .world
            .process_at_rank(r as i32)
            .send_with_tag(&header_bytes[..], wire::TAG_HEADER);
    }
    refused?;
    let window_len = n as usize * elem;
    let mut windows = Windows::create(&place.world, &place.node, true, true, window_len, put)
        .map_err(|e| match e {
            // Every rank is in step: an option this MPI cannot serve, said once, exit 2.
            WindowsError::PutUnsupported(why) => Error::invalid("route", why),
            WindowsError::Failed(why) => Error::Ipc(why),
        })?;
    let mut local = workload.clone();
    local.setup();
    let reducer = make_reducer.map(|make| make(&local));
    // From mpirun's start to the first chunk, which goes out right after this.
    let launch = launch_age();
    let rounds = options.run.warmup + options.run.repeat;
    let mut measured = Vec::new();
    let mut last_bytes = (0, 0);
    let mut outcome = Ok(());
    for round in 0..rounds {
        let baseline_first = round % 2 == 1;
        match one_round(
            &place,
            &ranks,
            &mut windows,
            &local,
            n,
            options,
            baseline_first,
            spawn,
            &mut backoff,
            reducer.as_deref(),
        ) {
            Ok((r, bytes)) => {
                if round >= options.run.warmup {
                    measured.push(r);
                }
                last_bytes = bytes;
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if outcome.as_ref().err().is_some_and(stopped) {
        // mpirun is stopping every rank, the user stopped this one, or the ranks are out of
        // step: no collective call can finish now, so the windows are left for the
        // process's exit to release.
        std::mem::forget(windows);
    } else {
        // Every worker finishes: STOP, then the windows are freed collectively.
        for r in 1..place.ranks {
            place
                .world
                .process_at_rank(r as i32)
                .send_with_tag(&[0u8; 0][..], wire::TAG_STOP);
        }
        drop(windows);
    }
    outcome?;
    let mut run_options = options.run.clone();
    run_options.pool.workers = place.ranks - 1;
    run_options.job.dispatch = crate::engine::protocol::Dispatch::Channel;
    let mut report = build_report(
        workload,
        &run_options,
        Meta::new(started, &machine),
        &machine,
        measured,
    );
    // Ranks are started by mpirun, and get their chunks as messages: advice about the
    // process pool's start methods and its queue does not apply.
    report.start = None;
    report
        .advice
        .retain(|a| !a.text.contains("--dispatch") && !a.text.contains("--start"));
    // The chunks' messages here are MPI's.
    for a in &mut report.advice {
        a.text = a.text.replace("channel messaging", "MPI messaging");
    }
    let mut per_node: Vec<(usize, usize)> = Vec::new();
    for r in &ranks {
        match per_node.iter_mut().find(|(node, _)| *node == r.node) {
            Some((_, count)) => *count += 1,
            None => per_node.push((r.node, 1)),
        }
    }
    report.mpi = Some(MpiReport {
        backend: "mpi".to_string(),
        ranks: place.ranks,
        nodes: per_node.len(),
        ranks_per_node: per_node.iter().map(|(_, c)| *c).collect(),
        hosts: ranks.iter().map(|r| r.host.clone()).collect(),
        window_bytes: window_len as u64,
        shm_result_bytes: last_bytes.0,
        cross_node_bytes: last_bytes.1,
        route: options.route.to_string(),
        launch_s: launch.map(|d| d.as_secs_f64()),
        wait: wire::wait_text(),
        stale_shm_files_removed: stale,
        mca_set,
        library: mpi::environment::library_version()
            .unwrap_or_default()
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string(),
    });
    Ok(report)
}

/// How long ago the `mpirun` that started this rank started: the age of this process's
/// parent when it is Open MPI's launcher (`mpirun`, `mpiexec`, `orterun`, or the `orted`
/// daemon on a remote node); `None` under another launcher. Clock-tick resolution (10 ms).
fn launch_age() -> Option<Duration> {
    let parent = std::os::unix::process::parent_id();
    let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).ok()?;
    if !["mpirun", "mpiexec", "orterun", "orted", "prterun", "prted"].contains(&comm.trim()) {
        return None;
    }
    crate::engine::sys::process_age_of(parent)
}

/// [`receive`] that waits for one tag, without an interrupt.
fn receive_tag(
    world: &SimpleCommunicator,
    from: Option<usize>,
    tag: i32,
    backoff: &mut Backoff,
) -> (Vec<u8>, usize, i32) {
    loop {
        let probe = match from {
            Some(r) => world
                .process_at_rank(r as i32)
                .immediate_matched_probe_with_tag(tag),
            None => world.any_process().immediate_matched_probe_with_tag(tag),
        };
        if let Some(matched) = probe {
            backoff.hit();
            let (bytes, status) = matched.matched_receive_vec::<u8>();
            return (bytes, status.source_rank() as usize, tag);
        }
        backoff.wait();
    }
}

/// One measured round on rank 0: the chunks out to the workers and the single-process run,
/// verified. Returns the round and the result bytes (shared window, across nodes).
#[allow(clippy::too_many_arguments)]
fn one_round<W: Workload + DeserializeOwned>(
    place: &Place,
    ranks: &[Rank],
    windows: &mut Windows,
    local: &W,
    n: u64,
    options: &MpiOptions,
    baseline_first: bool,
    spawn: Duration,
    backoff: &mut Backoff,
    reducer: Option<&dyn ChunkReducer<W::Output>>,
) -> Result<(Round, (u64, u64))> {
    let interrupt = &options.run.pool.supervision.interrupt;
    let mut pending: HashMap<u64, (Chunk, usize, Instant)> = HashMap::new();
    // A stop names the rank that died on this host, if one did.
    let lost =
        |e: Error, pending: &HashMap<u64, (Chunk, usize, Instant)>| lost_or(e, ranks, pending);
    let mut early = match options.run.baseline && baseline_first {
        true => {
            record_phase(Phase::Baseline);
            Some(run_single(local, n, interrupt).map_err(|e| lost(e, &pending))?)
        }
        false => None,
    };
    record_phase(Phase::Pool);
    let workers = place.ranks - 1;
    let elem = std::mem::size_of::<W::Output>() as u64;
    let mut dispenser = dispenser::<W>(n, workers, options);
    let inflight = options.run.pool.inflight.max(1);
    let began = Instant::now();
    let mut stats: Vec<WorkerStats> = (1..place.ranks)
        .map(|r| WorkerStats::idle(r, ranks[r].pid))
        .collect();
    let mut last_done = vec![Duration::ZERO; place.ranks];
    let (mut messages, mut message_bytes) = (0u64, 0u64);
    let (mut shm_bytes, mut cross_bytes, mut chunks) = (0u64, 0u64, 0u64);
    let mut elements_done = 0u64;
    let mut parts: Vec<ReducedChunk> = Vec::new();
    let mut failure: Option<Error> = None;
    // A round's first chunks say so: the worker's wait before them (this rank's baseline,
    // the previous round's verification) is not a chunk's dispatch cost.
    let send = |to: usize,
                chunk: Chunk,
                first: bool,
                pending: &mut HashMap<u64, (Chunk, usize, Instant)>| {
        let bytes = to_bytes(&[chunk.id, chunk.start, chunk.end, u64::from(first)]);
        place
            .world
            .process_at_rank(to as i32)
            .send_with_tag(&bytes[..], wire::TAG_CHUNK);
        pending.insert(chunk.id, (chunk, to, Instant::now()));
    };
    for r in 1..place.ranks {
        for _ in 0..inflight {
            if let Some(chunk) = dispenser.next_for(r - 1) {
                send(r, chunk, true, &mut pending);
                messages += 1;
                message_bytes += 32;
            }
        }
    }
    while !pending.is_empty() {
        // After a panic, the chunks still out are collected (so no rank is left blocked in
        // a send) without looking at signals; mpirun's own stop ends it anyway.
        let watch = failure.is_none().then_some(interrupt);
        let Some((bytes, from, tag)) = receive(&place.world, None, backoff, watch) else {
            let signal = interrupt.requested().unwrap_or(libc::SIGTERM);
            let stop = Error::Interrupted {
                signal,
                phase: Phase::Pool,
                chunks_done: chunks,
                chunks: chunks + pending.len() as u64,
                elements_done,
                n,
                workers,
                needed_term: 0,
                needed_kill: 0,
            };
            return Err(lost(stop, &pending));
        };
        messages += 1;
        message_bytes += bytes.len() as u64;
        match tag {
            wire::TAG_DONE => {
                let Some((done, acc, results)) = Done::decode(&bytes) else {
                    return Err(Error::Ipc(format!("rank {from} sent a short Done message")));
                };
                let Some((chunk, _, _)) = pending.remove(&done.id) else {
                    return Err(Error::Ipc(format!(
                        "rank {from} finished chunk {} it was not given",
                        done.id
                    )));
                };
                let len = chunk.len() * elem;
                let on_root_node = ranks[from].node == 0;
                if on_root_node && results.is_empty() {
                    shm_bytes += len;
                } else if !on_root_node && results.is_empty() && windows.put.is_some() {
                    // Put into this rank's memory before the message was sent.
                    cross_bytes += len;
                } else if !on_root_node && results.len() as u64 == len {
                    if let Some(window) = windows.shared.as_mut() {
                        window
                            .chunk_mut((chunk.start * elem) as usize, len as usize)
                            .copy_from_slice(results);
                    }
                    cross_bytes += len;
                } else {
                    return Err(Error::Ipc(format!(
                        "rank {from} sent {} result bytes for chunk {}, {} expected",
                        results.len(),
                        chunk.id,
                        if on_root_node { 0 } else { len }
                    )));
                }
                if reducer.is_some() {
                    parts.push(ReducedChunk {
                        range: chunk.range(),
                        acc: acc.to_vec(),
                    });
                }
                chunks += 1;
                elements_done += chunk.len();
                let w = &mut stats[from - 1];
                w.chunks += 1;
                w.compute_s += done.compute_ns as f64 * 1e-9;
                w.sleeps = done.sleeps;
                w.dispatch_s += done.waited_ns as f64 * 1e-9;
                last_done[from] = began.elapsed();
                if failure.is_none()
                    && let Some(next) = dispenser.next_for(from - 1)
                {
                    send(from, next, false, &mut pending);
                    messages += 1;
                    message_bytes += 32;
                }
            }
            wire::TAG_FAILED => {
                let failed: Failed = postcard::from_bytes(&bytes).map_err(|e| {
                    Error::Ipc(format!("rank {from} sent a bad failure message: {e}"))
                })?;
                let (chunk, _, _) = pending.remove(&failed.id).unwrap_or((
                    Chunk {
                        id: failed.id,
                        start: 0,
                        end: 0,
                    },
                    from,
                    Instant::now(),
                ));
                failure.get_or_insert(Error::KernelPanicked {
                    chunk: chunk.id,
                    start: chunk.start,
                    end: chunk.end,
                    worker: from,
                    pid: ranks[from].pid,
                    message: format!(
                        "{} (MPI rank {from} on host {})",
                        failed.message, ranks[from].host
                    ),
                    location: failed.location,
                });
            }
            other => {
                return Err(Error::Ipc(format!(
                    "rank {from} sent an unexpected message (tag {other})"
                )));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let wall = began.elapsed();
    windows.sync();
    for (i, w) in stats.iter_mut().enumerate() {
        w.idle_end_s = wall.saturating_sub(last_done[i + 1]).as_secs_f64();
    }
    let single = match early.take() {
        Some(single) => Some(single),
        None if options.run.baseline => {
            record_phase(Phase::Baseline);
            Some(run_single(local, n, interrupt).map_err(|e| lost(e, &pending))?)
        }
        None => None,
    };
    let mut job = in_process_stats(n, dispenser.chunk_size(), chunks, wall, stats, &options.run);
    let reduced = combine_round(reducer, parts, n, &mut job)?;
    let window = windows
        .shared
        .as_ref()
        .ok_or_else(|| Error::Ipc("rank 0 has no shared window".into()))?;
    let results: &[W::Output] = bytemuck::try_cast_slice(window.bytes()).map_err(|e| {
        Error::Ipc(format!(
            "the shared window is not aligned for the elements: {e}"
        ))
    })?;
    record_phase(Phase::Verify);
    let verify_began = Instant::now();
    let stop = |s: crate::lab::baseline::Stopped| lost(s.into_error(Phase::Verify, n), &pending);
    let (mismatch, baseline_reduction) = match &single {
        Some((out, _, _)) => (
            compare(results, out, local.tolerance().as_ref(), interrupt).map_err(stop)?,
            match (reducer, &reduced) {
                (Some(reducer), Some(r)) => Some(
                    reduce_like(reducer, r, out, interrupt)
                        .map_err(stop)?
                        .map_err(Error::Ipc)?,
                ),
                _ => None,
            },
        ),
        None => (None, None),
    };
    let checksum = checksum_until(results, interrupt).map_err(stop)?;
    let verify = verify_began.elapsed();
    job.ipc_messages = messages;
    job.ipc_bytes = message_bytes;
    job.shm_bytes = shm_bytes;
    // Results in messages: those sent back; results put went through the window.
    job.channel_result_bytes = if windows.put.is_some() {
        0
    } else {
        cross_bytes
    };
    job.dispatch = crate::engine::protocol::Dispatch::Channel;
    job.parent_sleeps = backoff.sleeps;
    job.worker_sleeps = job.workers.iter().map(|w| w.sleeps).sum();
    if chunks > 0 {
        // As with queue dispatch: a chunk's cost is the worker's gap before its kernel
        // (waiting for and receiving the chunk's message), not the time it sat queued.
        let per =
            |f: fn(&WorkerStats) -> f64| job.workers.iter().map(f).sum::<f64>() / chunks as f64;
        job.chunk_compute_mean_s = per(|w| w.compute_s);
        job.dispatch_per_chunk_s = per(|w| w.dispatch_s);
        job.chunk_rtt_mean_s = job.chunk_compute_mean_s + job.dispatch_per_chunk_s;
    }
    let round = Round {
        wall: wall + spawn,
        start: spawn,
        start_method: None,
        stats: job,
        baseline_os: single.as_ref().and_then(|(_, _, os)| *os),
        baseline: single.map(|(_, took, _)| took),
        mismatch,
        baseline_reduction,
        checksum,
        verify,
        output: None,
    };
    Ok((round, (shm_bytes, cross_bytes)))
}

/// A panic hook, as `std::panic::take_hook` returns it.
type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Puts the previous panic hook back when dropped.
struct RestoreHook(Option<PanicHook>);

impl Drop for RestoreHook {
    fn drop(&mut self) {
        if let Some(hook) = self.0.take() {
            std::panic::set_hook(hook);
        }
    }
}

fn worker<W: Workload + DeserializeOwned>(
    place: Place,
    interrupt: &Interrupt,
    make_reducer: Option<MakeReducer<W>>,
) -> Result<()> {
    let mut backoff = Backoff::default();
    let host = mpi::environment::processor_name().unwrap_or_default();
    let me = std::process::id();
    let started = crate::engine::sys::process_started(me).map_or(0, |(s, _)| s);
    let mut hello = to_bytes(&[u64::from(me), place.node_id as u64, started]);
    hello.extend_from_slice(host.as_bytes());
    let root = place.world.process_at_rank(0);
    root.send_with_tag(&hello[..], wire::TAG_HELLO);
    let (bytes, _, _) = receive_tag(&place.world, Some(0), wire::TAG_HEADER, &mut backoff);
    let header: Header =
        postcard::from_bytes(&bytes).map_err(|e| Error::Ipc(format!("bad header: {e}")))?;
    if header.refused.is_some() {
        return Ok(());
    }
    let elem = std::mem::size_of::<W::Output>() as u64;
    if header.name != W::NAME || header.elem_size != elem {
        return Err(Error::Ipc(format!(
            "rank {} runs workload `{}` but rank 0 sent `{}`: start every rank with the same command",
            place.rank,
            W::NAME,
            header.name
        )));
    }
    let mut workload: W = postcard::from_bytes(&header.params)
        .map_err(|e| Error::Ipc(format!("bad parameters for `{}`: {e}", W::NAME)))?;
    workload.setup();
    let reducer = match (header.reduce, make_reducer) {
        (false, _) => None,
        (true, Some(make)) => Some(make(&workload)),
        (true, None) => {
            return Err(Error::Ipc(format!(
                "rank {} runs `{}` without its reduction but rank 0 reduces: start every rank \
                 with the same program",
                place.rank,
                W::NAME
            )));
        }
    };
    let len = usize::try_from(header.n.saturating_mul(elem))
        .map_err(|_| Error::Ipc("the job's output does not fit in memory".into()))?;
    let mut windows = match Windows::create(
        &place.world,
        &place.node,
        place.on_root_node(),
        false,
        len,
        header.put,
    ) {
        Ok(windows) => windows,
        // Rank 0 reports it; every rank finishes in step.
        Err(WindowsError::PutUnsupported(_)) => return Ok(()),
        Err(WindowsError::Failed(why)) => return Err(Error::Ipc(why)),
    };
    // A panic is reported to rank 0 with its message and place, not printed here.
    let _restore = RestoreHook(Some(std::panic::take_hook()));
    crate::engine::worker::quiet_panics();
    let mut idle_since = Instant::now();
    let mut serve = || -> Result<()> {
        loop {
            let Some((bytes, _, tag)) =
                receive(&place.world, Some(0), &mut backoff, Some(interrupt))
            else {
                // mpirun passes SIGINT and SIGTERM on as SIGTERM when it stops the job
                // (when it is interrupted, or a rank died), and SIGKILLs what is left a
                // second later; no MPI call can be trusted to finish. Stay alive, idle,
                // until then (at most two seconds): rank 0 tells the rank that died from
                // the ones being stopped by which processes are gone.
                let signal = interrupt.requested().unwrap_or(libc::SIGTERM);
                std::thread::sleep(Duration::from_secs(2));
                std::process::exit(128 + signal);
            };
            if tag == wire::TAG_STOP {
                return Ok(());
            }
            let w = words(&bytes);
            let [id, start, end, first] = w[..] else {
                return Err(Error::Ipc(format!(
                    "a chunk message of {} bytes",
                    bytes.len()
                )));
            };
            if start > end || end > header.n {
                return Err(Error::Ipc(format!(
                    "chunk {id} ({start}..{end}) lies outside the job's {} elements",
                    header.n
                )));
            }
            if first == 1 {
                idle_since = Instant::now();
            }
            let fault = header
                .faults
                .iter()
                .find(|f| f.fires(id, 0))
                .map(|f| f.action);
            let bytes_len = ((end - start) * elem) as usize;
            let offset = (start * elem) as usize;
            let mut own = Vec::new();
            let out: &mut [u8] = match windows.shared.as_mut() {
                Some(window) => window.chunk_mut(offset, bytes_len),
                None => {
                    own = vec![0u8; bytes_len];
                    &mut own
                }
            };
            let began = Instant::now();
            let waited_ns = began.duration_since(idle_since).as_nanos() as u64;
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if let Some(action) = fault {
                    action.strike(id, None);
                }
                let typed: &mut [W::Output] = bytemuck::cast_slice_mut(out);
                workload.kernel(start..end, typed);
                if fault == Some(FaultAction::Corrupt) && !out.is_empty() {
                    out[0] ^= 0x5a;
                }
                reducer.as_ref().map(|r| {
                    let typed: &[W::Output] = bytemuck::cast_slice(out);
                    r.reduce_chunk(start..end, typed)
                })
            }));
            let compute_ns = began.elapsed().as_nanos() as u64;
            idle_since = Instant::now();
            match ran {
                Ok(acc) => {
                    let mut results: &[u8] = &own;
                    if let Some(window) = &windows.shared {
                        window.sync();
                    } else if let Some(put) = &windows.put {
                        put.put(offset, &own).map_err(Error::Ipc)?;
                        results = &[];
                    }
                    let done = Done {
                        id,
                        compute_ns,
                        sleeps: backoff.sleeps,
                        waited_ns,
                    };
                    let acc = acc.unwrap_or_default();
                    root.send_with_tag(&done.encode(&acc, results)[..], wire::TAG_DONE);
                }
                Err(panic) => {
                    let (message, location) = crate::engine::worker::panic_report(&*panic);
                    let failed = Failed {
                        id,
                        message,
                        location,
                    };
                    let bytes =
                        postcard::to_stdvec(&failed).map_err(|e| Error::Ipc(e.to_string()))?;
                    root.send_with_tag(&bytes[..], wire::TAG_FAILED);
                }
            }
        }
    };
    let outcome = serve();
    match outcome {
        Ok(()) => drop(windows),
        // Out of step with rank 0: freeing the windows would wait for it (see `stopped`).
        Err(_) => std::mem::forget(windows),
    }
    outcome
}
