//! One MPI run: the ranks find their nodes, rank 0 sends the job, the ranks on its node map
//! the shared window, then rank 0 hands out chunks and the workers compute them until rank
//! 0, having verified every round, says stop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;

use super::window::Window;
use super::wire::{self, Backoff, Done, Header};
use super::{MpiOptions, MpiReport};
use crate::engine::interrupt::Interrupt;
use crate::engine::pool::WorkerStats;
use crate::engine::schedule::{Chunk, Dispenser};
use crate::error::{Error, Phase, Result};
use crate::lab::baseline::{checksum_until, compare, run_single};
use crate::lab::meta::Meta;
use crate::lab::model::{Mode, Report};
use crate::lab::run::{Round, build_report, check_element, in_process_stats};
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
    let node = match node_size {
        Some(size) => world
            .split_by_color(Color::with_value((rank / size.max(1)) as i32))
            .expect("every rank has a color"),
        None => world.split_shared(rank as i32),
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

pub(super) fn run<W: Workload>(
    universe: &Universe,
    workload: &W,
    n: u64,
    options: &MpiOptions,
    mca_set: Vec<String>,
) -> Result<Option<Report>> {
    let place = locate(universe, options.node_size);
    if place.rank == 0 {
        root(place, workload, n, options, mca_set).map(Some)
    } else {
        worker::<W>(place, &options.run.pool.supervision.interrupt)?;
        Ok(None)
    }
}

/// What rank 0 knows of a worker rank.
struct Rank {
    pid: u32,
    node: usize,
    host: String,
}

fn refusal<W: Workload>(workload: &W, n: u64, options: &MpiOptions, ranks: usize) -> Result<()> {
    let run = &options.run;
    if ranks < 2 {
        return Err(Error::invalid(
            "backend",
            format!(
                "the mpi backend needs at least 2 ranks (rank 0 and a worker), got {ranks}: start it with `mpirun -np K` and K ≥ 2"
            ),
        ));
    }
    if run.mode != Mode::Processes {
        return Err(Error::invalid(
            "mode",
            format!("the mpi backend runs ranks, not `mode` {}", run.mode),
        ));
    }
    if run.output.is_some() {
        return Err(Error::invalid(
            "output",
            "the mpi backend does not stream to a file (`output`): use the process backend",
        ));
    }
    if !run.job.faults.is_empty() {
        return Err(Error::invalid(
            "faults",
            "the mpi backend has no fault injection (`faults`): a lost rank ends an MPI job",
        ));
    }
    if run.repeat == 0 {
        return Err(Error::invalid(
            "repeat",
            "`repeat` must be at least 1 (got 0)",
        ));
    }
    crate::engine::pool::check_counts(ranks - 1, run.pool.inflight, run.job.chunk_size)?;
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

fn root<W: Workload>(
    place: Place,
    workload: &W,
    n: u64,
    options: &MpiOptions,
    mca_set: Vec<String>,
) -> Result<Report> {
    let started = std::time::SystemTime::now();
    let machine = crate::engine::limits::Machine::read();
    let began = Instant::now();
    let mut backoff = Backoff::default();
    // Every worker says where it is.
    let mut ranks: Vec<Rank> = vec![Rank {
        pid: std::process::id(),
        node: 0,
        host: mpi::environment::processor_name().unwrap_or_default(),
    }];
    ranks.extend((1..place.ranks).map(|_| Rank {
        pid: 0,
        node: 0,
        host: String::new(),
    }));
    for _ in 1..place.ranks {
        let (bytes, from, _) = receive_tag(&place.world, None, wire::TAG_HELLO, &mut backoff);
        let w = words(&bytes[..16]);
        ranks[from] = Rank {
            pid: w[0] as u32,
            node: w[1] as usize,
            host: String::from_utf8_lossy(&bytes[16..]).into_owned(),
        };
    }
    // Starting: from this process's start (mpirun's exec, MPI_Init) until every worker
    // rank said where it is.
    let spawn = crate::engine::sys::process_age().unwrap_or_else(|| began.elapsed());
    // What a killed job left in /dev/shm goes before this job adds its own files' worth.
    let stale = super::remove_stale_segments();
    let refused = refusal(workload, n, options, place.ranks);
    let elem = std::mem::size_of::<W::Output>();
    let header = Header {
        n,
        elem_size: elem as u64,
        name: W::NAME.to_string(),
        params: postcard::to_stdvec(workload).map_err(|e| Error::Ipc(e.to_string()))?,
        refused: refused.as_ref().err().map(|e| e.to_string()),
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
    let mut window = Window::allocate(&place.node, window_len, true).map_err(Error::Ipc)?;
    let mut local = workload.clone();
    local.setup();
    let rounds = options.run.warmup + options.run.repeat;
    let mut measured = Vec::new();
    let mut last_bytes = (0, 0);
    let mut outcome = Ok(());
    for round in 0..rounds {
        let baseline_first = round % 2 == 1;
        match one_round(
            &place,
            &ranks,
            &mut window,
            &local,
            n,
            options,
            baseline_first,
            spawn,
            &mut backoff,
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
    // SIGINT or SIGTERM (mpirun forwards them when it is stopped): the other ranks got it
    // too, and no collective call can be trusted to finish; end the whole job at once.
    if let Err(e) = &outcome
        && let Some(signal) = e.interrupted_by()
    {
        place.world.abort(128 + signal);
    }
    // Every worker finishes: STOP, then the window is freed collectively.
    for r in 1..place.ranks {
        place
            .world
            .process_at_rank(r as i32)
            .send_with_tag(&[0u8; 0][..], wire::TAG_STOP);
    }
    drop(window);
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
fn one_round<W: Workload>(
    place: &Place,
    ranks: &[Rank],
    window: &mut Window,
    local: &W,
    n: u64,
    options: &MpiOptions,
    baseline_first: bool,
    spawn: Duration,
    backoff: &mut Backoff,
) -> Result<(Round, (u64, u64))> {
    let interrupt = &options.run.pool.supervision.interrupt;
    let mut early = match options.run.baseline && baseline_first {
        true => Some(run_single(local, n, interrupt)?),
        false => None,
    };
    let workers = place.ranks - 1;
    let elem = std::mem::size_of::<W::Output>() as u64;
    let chunk_size = options
        .run
        .job
        .chunk_size
        .or_else(|| W::WAITS.then(|| crate::engine::schedule::waiting_chunk_size(n, workers)));
    let mut dispenser = Dispenser::new(options.run.job.schedule, n, workers, chunk_size);
    let inflight = options.run.pool.inflight.max(1);
    let began = Instant::now();
    let mut pending: HashMap<u64, (Chunk, usize, Instant)> = HashMap::new();
    let mut stats: Vec<WorkerStats> = (1..place.ranks)
        .map(|r| WorkerStats::idle(r, ranks[r].pid))
        .collect();
    let mut last_done = vec![Duration::ZERO; place.ranks];
    let (mut messages, mut message_bytes) = (0u64, 0u64);
    let (mut shm_bytes, mut cross_bytes, mut chunks) = (0u64, 0u64, 0u64);
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
                message_bytes += 24;
            }
        }
    }
    while !pending.is_empty() {
        let stop = failure
            .is_some()
            .then_some(())
            .map(|_| None)
            .unwrap_or(Some(interrupt));
        let Some((bytes, from, tag)) = receive(&place.world, None, backoff, stop) else {
            let signal = interrupt.requested().unwrap_or(libc::SIGTERM);
            failure = Some(Error::Interrupted {
                signal,
                phase: Phase::Pool,
                chunks_done: chunks,
                chunks: chunks + pending.len() as u64,
                elements_done: 0,
                n,
                workers,
                needed_term: 0,
                needed_kill: 0,
            });
            continue;
        };
        messages += 1;
        message_bytes += bytes.len() as u64;
        match tag {
            wire::TAG_DONE => {
                let Some((done, results)) = Done::decode(&bytes) else {
                    return Err(Error::Ipc(format!("rank {from} sent a short Done message")));
                };
                let Some((chunk, _, _)) = pending.remove(&done.id) else {
                    return Err(Error::Ipc(format!(
                        "rank {from} finished chunk {} it was not given",
                        done.id
                    )));
                };
                let len = (chunk.len() * elem) as usize;
                if results.is_empty() && len > 0 {
                    shm_bytes += len as u64;
                } else if results.len() == len {
                    window
                        .chunk_mut((chunk.start * elem) as usize, len)
                        .copy_from_slice(results);
                    cross_bytes += len as u64;
                } else {
                    return Err(Error::Ipc(format!(
                        "rank {from} sent {} result bytes for chunk {}, {len} expected",
                        results.len(),
                        chunk.id
                    )));
                }
                chunks += 1;
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
                    message_bytes += 24;
                }
            }
            wire::TAG_FAILED => {
                let w = words(&bytes[..8]);
                let message = String::from_utf8_lossy(&bytes[8..]).into_owned();
                let (chunk, _, _) = pending.remove(&w[0]).unwrap_or((
                    Chunk {
                        id: w[0],
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
                    message: format!("{message} (rank {from} on host {})", ranks[from].host),
                    location: None,
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
    window.sync();
    for (i, w) in stats.iter_mut().enumerate() {
        w.idle_end_s = wall.saturating_sub(last_done[i + 1]).as_secs_f64();
    }
    let results: &[W::Output] = bytemuck::try_cast_slice(window.bytes()).map_err(|e| {
        Error::Ipc(format!(
            "the shared window is not aligned for the elements: {e}"
        ))
    })?;
    let single = match early.take() {
        Some(single) => Some(single),
        None if options.run.baseline => Some(run_single(local, n, interrupt)?),
        None => None,
    };
    let verify_began = Instant::now();
    let stop = |s: crate::lab::baseline::Stopped| s.into_error(Phase::Verify, n);
    let mismatch = match &single {
        Some((out, _, _)) => {
            compare(results, out, local.tolerance().as_ref(), interrupt).map_err(stop)?
        }
        None => None,
    };
    let checksum = checksum_until(results, interrupt).map_err(stop)?;
    let verify = verify_began.elapsed();
    let mut job = in_process_stats(n, dispenser.chunk_size(), chunks, wall, stats, &options.run);
    job.ipc_messages = messages;
    job.ipc_bytes = message_bytes;
    job.shm_bytes = shm_bytes;
    job.channel_result_bytes = cross_bytes;
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
        stats: job,
        baseline_os: single.as_ref().and_then(|(_, _, os)| *os),
        baseline: single.map(|(_, took, _)| took),
        mismatch,
        baseline_reduction: None,
        checksum,
        verify,
        output: None,
    };
    Ok((round, (shm_bytes, cross_bytes)))
}

fn worker<W: Workload>(place: Place, interrupt: &Interrupt) -> Result<()> {
    let mut backoff = Backoff::default();
    let host = mpi::environment::processor_name().unwrap_or_default();
    let mut hello = to_bytes(&[u64::from(std::process::id()), place.node_id as u64]);
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
    let mut window = match place.on_root_node() {
        true => Some(
            Window::allocate(&place.node, (header.n * elem) as usize, false).map_err(Error::Ipc)?,
        ),
        false => None,
    };
    let mut idle_since = Instant::now();
    loop {
        let Some((bytes, _, tag)) = receive(&place.world, Some(0), &mut backoff, Some(interrupt))
        else {
            // As on rank 0: a stopped job ends every rank at once.
            let signal = interrupt.requested().unwrap_or(libc::SIGTERM);
            place.world.abort(128 + signal);
        };
        if tag == wire::TAG_STOP {
            break;
        }
        let w = words(&bytes);
        let (id, start, end, first) = (w[0], w[1], w[2], w[3] == 1);
        if first {
            idle_since = Instant::now();
        }
        let len = ((end - start) * elem) as usize;
        let mut own = Vec::new();
        let out: &mut [u8] = match window.as_mut() {
            Some(window) => window.chunk_mut((start * elem) as usize, len),
            None => {
                own = vec![0u8; len];
                &mut own
            }
        };
        let began = Instant::now();
        let waited_ns = began.duration_since(idle_since).as_nanos() as u64;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let typed: &mut [W::Output] = bytemuck::cast_slice_mut(out);
            workload.kernel(start..end, typed);
        }));
        let compute_ns = began.elapsed().as_nanos() as u64;
        idle_since = Instant::now();
        match ran {
            Ok(()) => {
                if let Some(window) = &window {
                    window.sync();
                }
                let done = Done {
                    id,
                    compute_ns,
                    sleeps: backoff.sleeps,
                    waited_ns,
                };
                root.send_with_tag(&done.encode(&own)[..], wire::TAG_DONE);
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".to_string());
                let mut bytes = id.to_le_bytes().to_vec();
                bytes.extend_from_slice(message.as_bytes());
                root.send_with_tag(&bytes[..], wire::TAG_FAILED);
            }
        }
    }
    drop(window);
    Ok(())
}
