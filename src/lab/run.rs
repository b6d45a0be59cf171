//! A whole measured run: validate, start a pool, run the job, run it again in one process,
//! compare, and report. This is what `procpool --workers 8 squares 10000000` does.
//!
//! With `--repeat R --warmup K`, the baseline and the parallel run alternate K + R times
//! (the order flips every round, so drift hits both alike); every round is verified, and the
//! last K are discarded before the statistics.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::engine::control::monotonic_ns;
use crate::engine::limits::{Machine, check_memory};
use crate::engine::pool::{
    JobOptions, JobStats, PoolBuilder, PoolOptions, ReducedChunk, StartMethod, Supervised, Tally,
    TracePhase, Want, WorkerStats, in_chunk_order,
};
use crate::engine::protocol::Transport;
use crate::engine::schedule::{Dispenser, Schedule};
use crate::error::{Error, Phase, Result};
use crate::lab::advice::{Observations, Rounds, advise, caveats};
use crate::lab::baseline::{Single, Stopped, checksum_until, compare, run_kernel, run_single};
use crate::lab::contention::{Contention, LoadSnapshot};
use crate::lab::measure::{ratio, summarize};
use crate::lab::meta::{Meta, WorkersFrom};
use crate::lab::model::{Breakdown, Mismatch, Mode, OsUsage, OutputReport, Repeats, Report};
use crate::lab::options::{Runner, first_refused};
use crate::lab::stream::{FileSink, RING, window_elems};
use crate::lab::threads::run_threads;
use crate::workload::{ChunkReducer, Reduce, ReducerOf, Workload};

/// How to run a job.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The pool: workers, how they start, supervision (processes mode; `workers` is also
    /// the thread count of threads mode). The same options a [`crate::PoolBuilder`] sets.
    pub pool: PoolOptions,
    /// How each job is cut and handed out, how results come back, and faults to inject:
    /// the same options a [`crate::Pool`] job takes.
    pub job: JobOptions,
    /// Run the single-process baseline and verify against it.
    pub baseline: bool,
    /// Measured rounds (each: baseline and parallel run, alternating).
    pub repeat: usize,
    /// Rounds run first and discarded.
    pub warmup: usize,
    /// Stream the output to this file in bounded memory instead of holding it. The file
    /// replaces an older one only when the run succeeded and its output was verified (or
    /// `baseline` is off); a device or FIFO is written in place (see
    /// [`crate::lab::OutputFile`]).
    pub output: Option<PathBuf>,
    /// Window length in bytes when streaming.
    pub window_bytes: u64,
    /// Processes (the pool), threads, or a single process.
    pub mode: Mode,
    /// Where `pool.workers` came from, for the report ([`crate::lab::default_workers`]).
    pub workers_from: WorkersFrom,
}

/// The most rounds (`--warmup` plus `--repeat`) one run may take.
pub(crate) const MAX_ROUNDS: usize = 10_000;

impl RunOptions {
    /// A run on `workers` workers (processes, or threads in threads mode), everything
    /// else as [`RunOptions::default`] has it.
    ///
    /// ```
    /// let mut options = procpool::RunOptions::new(2);
    /// options.repeat = 3;
    /// assert_eq!(options.pool.workers, 2);
    /// ```
    pub fn new(workers: usize) -> Self {
        let mut options = RunOptions::default();
        options.pool.workers = workers;
        options.workers_from = WorkersFrom::Given;
        options
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            // A run waits for as many workers as there are CPUs; the rest join the job as
            // they connect, so hundreds of workers do not hold the work back.
            pool: PoolOptions {
                start_in_background: true,
                ..PoolOptions::default()
            },
            job: JobOptions::default(),
            baseline: true,
            repeat: 1,
            warmup: 0,
            output: None,
            window_bytes: crate::lab::stream::DEFAULT_WINDOW_BYTES,
            mode: Mode::Processes,
            // `PoolOptions::default` has one worker per effective CPU.
            workers_from: WorkersFrom::Cpus,
        }
    }
}

/// Runs `workload` on `0..n` across a fresh pool and in one process, and reports.
///
/// Bad input is refused with [`Error::InvalidInput`] before any process starts. A run whose
/// outputs differ is not an error: the report says `verified: false` and where.
pub fn run<W: Workload>(workload: &W, n: u64, options: &RunOptions) -> Result<Report> {
    run_inspect(workload, n, options, |_| {})
}

/// What one round measured (the MPI backend fills it in too).
pub(crate) struct Round {
    pub(crate) wall: Duration,
    pub(crate) start: Duration,
    /// How the pool's workers started (the fork server falls back to spawn), and how many
    /// `start` covers: none for the modes and backends without a pool.
    pub(crate) start_method: Option<StartedWith>,
    pub(crate) stats: JobStats,
    pub(crate) baseline: Option<Duration>,
    /// The single-process run's CPU time, faults and switches.
    pub(crate) baseline_os: Option<OsUsage>,
    pub(crate) mismatch: Option<Mismatch>,
    /// The single-process run's reduction over the same chunks, and whether it equals the
    /// pool's bit for bit.
    pub(crate) baseline_reduction: Option<ReductionCheck>,
    pub(crate) checksum: String,
    pub(crate) verify: Duration,
    pub(crate) output: Option<OutputReport>,
}

/// How a pool started its workers, and how many of them its build waited for (with
/// [`PoolBuilder::start_in_background`] and `spawn`, the others start during the job).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StartedWith {
    pub(crate) method: StartMethod,
    pub(crate) workers: usize,
}

impl StartedWith {
    /// What `pool` reports right after its build.
    fn of(pool: &crate::engine::pool::Pool) -> Self {
        StartedWith {
            method: pool.start_method(),
            // A worker left to start in the background has no pid yet.
            workers: pool.pids().iter().filter(|&&pid| pid != 0).count(),
        }
    }
}

/// The parent's phases of a traced round (start workers, baseline, verify), added to the
/// job's own trace.
#[derive(Default)]
struct Phases(std::cell::RefCell<Vec<TracePhase>>);

impl Phases {
    /// Runs `f` as phase `name` when tracing.
    fn time<T>(&self, on: bool, name: &str, f: impl FnOnce() -> T) -> T {
        if !on {
            return f();
        }
        let start_ns = monotonic_ns();
        let out = f();
        self.0.borrow_mut().push(TracePhase {
            name: name.to_string(),
            start_ns,
            end_ns: monotonic_ns(),
        });
        out
    }

    /// Adds the phases to `stats`' trace, in time order.
    fn into_trace(self, stats: &mut JobStats) {
        if let Some(trace) = stats.trace.as_mut() {
            trace.phases.extend(self.0.into_inner());
            trace.phases.sort_by_key(|p| (p.start_ns, p.end_ns));
        }
    }
}

/// The single-process reduction of a round, against the pool's.
#[derive(Debug, Clone)]
pub(crate) struct ReductionCheck {
    /// As JSON, for the report.
    baseline: serde_json::Value,
    /// Equal to the pool's, byte for byte (encoded).
    matches: bool,
}

/// Like [`run`], and hands the output (after verification, before it is freed) to `inspect`:
/// to write an image, a file, or check something of your own.
pub fn run_inspect<W: Workload>(
    workload: &W,
    n: u64,
    options: &RunOptions,
    inspect: impl FnOnce(&[W::Output]),
) -> Result<Report> {
    run_lab(workload, n, options, inspect, None)
}

/// Like [`run`], and reduces too ([`Reduce`]): the workers reduce every chunk, the report
/// gives the chunks' accumulators combined in chunk order
/// ([`Report::reduction`](crate::Report::reduction)) and checks them against the
/// single-process output reduced over the same chunks in the same order, bit for bit.
/// (Streamed runs, with [`RunOptions::output`], do not reduce.)
pub fn run_reduce<W: Reduce>(workload: &W, n: u64, options: &RunOptions) -> Result<Report> {
    run_reduce_inspect(workload, n, options, |_| {})
}

/// [`run_reduce`] with an `inspect` as in [`run_inspect`].
pub fn run_reduce_inspect<W: Reduce>(
    workload: &W,
    n: u64,
    options: &RunOptions,
    inspect: impl FnOnce(&[W::Output]),
) -> Result<Report> {
    run_lab(workload, n, options, inspect, Some(&ReducerOf(workload)))
}

fn run_lab<W: Workload>(
    workload: &W,
    n: u64,
    options: &RunOptions,
    inspect: impl FnOnce(&[W::Output]),
    reducer: Option<&dyn ChunkReducer<W::Output>>,
) -> Result<Report> {
    let started = std::time::SystemTime::now();
    let load_start = LoadSnapshot::now();
    let machine = Machine::read();
    validate(
        W::NAME,
        n,
        std::mem::size_of::<W::Output>(),
        W::WAITS,
        options,
        &machine,
    )?;
    check_element::<W>(workload)?;
    // Bounded by `validate`.
    let rounds = options.warmup.saturating_add(options.repeat.max(1));
    // This process's own copy for the single-process run, threads and verification: set
    // up once, as each worker sets up its own.
    let mut local = workload.clone();
    local.setup();
    let mut inspect = Some(inspect);
    let mut measured: Vec<Round> = Vec::with_capacity(options.repeat.max(1));
    for round in 0..rounds {
        // Alternate which goes first, so slow drift (thermal, other load) hits both.
        let baseline_first = round % 2 == 1;
        let last = round + 1 == rounds;
        let hand_over = |out: &[W::Output]| {
            if last && let Some(f) = inspect.take() {
                f(out);
            }
        };
        let r = run_round(
            workload,
            &local,
            n,
            options,
            baseline_first,
            hand_over,
            reducer,
        )?;
        if round >= options.warmup {
            measured.push(r);
        }
    }
    Ok(build_report_loaded(
        workload,
        options,
        Meta::new(started, &machine),
        &machine,
        measured,
        (load_start, LoadSnapshot::now()),
    ))
}

/// What verifying one round found: the single-process time, the first mismatch and the
/// single-process reduction (when there was a baseline), the checksum, and the time taken.
type Checked = (
    Option<(Duration, Option<OsUsage>)>,
    Option<(Option<Mismatch>, Option<ReductionCheck>)>,
    String,
    Duration,
);

/// A round's reduction: its chunks' accumulators in chunk order, and their combination.
pub(crate) struct RoundReduction {
    parts: Vec<ReducedChunk>,
    combined: Vec<u8>,
}

/// Combines a round's chunk accumulators in chunk order (checking that they cover `0..n`
/// once) into `stats.reduction`; `None` without a reducer.
pub(crate) fn combine_round<T>(
    reducer: Option<&dyn ChunkReducer<T>>,
    parts: Vec<ReducedChunk>,
    n: u64,
    stats: &mut JobStats,
) -> Result<Option<RoundReduction>> {
    let Some(reducer) = reducer else {
        return Ok(None);
    };
    let parts = in_chunk_order(parts, n)?;
    let combined = reducer
        .combine(&mut parts.iter().map(|p| p.acc.as_slice()))
        .map_err(Error::Ipc)?;
    stats.reduction = Some(reducer.describe(&combined));
    Ok(Some(RoundReduction { parts, combined }))
}

/// One round: the parallel run and (unless skipped) the single-process run, verified.
fn run_round<W: Workload>(
    workload: &W,
    local: &W,
    n: u64,
    options: &RunOptions,
    baseline_first: bool,
    inspect: impl FnOnce(&[W::Output]),
    reducer: Option<&dyn ChunkReducer<W::Output>>,
) -> Result<Round> {
    if let Some(path) = &options.output {
        return stream_round(workload, local, n, options, path);
    }
    let combine =
        |parts: Vec<ReducedChunk>, stats: &mut JobStats| combine_round(reducer, parts, n, stats);
    let interrupt = &options.pool.supervision.interrupt;
    let tolerance = local.tolerance();
    let tracing = options.job.trace && options.mode == Mode::Processes;
    let phases = Phases::default();
    let mut early = match options.baseline && baseline_first {
        true => Some(phases.time(tracing, "baseline", || run_single(local, n, interrupt))?),
        false => None,
    };
    let verify = |results: &[W::Output],
                  reduced: Option<RoundReduction>,
                  early: &mut Option<Single<W::Output>>|
     -> Result<Checked> {
        let single = match early.take() {
            Some(single) => Some(single),
            None if options.baseline => {
                Some(phases.time(tracing, "baseline", || run_single(local, n, interrupt))?)
            }
            None => None,
        };
        let verify_ns = monotonic_ns();
        let began = Instant::now();
        let stop = |s: Stopped| s.into_error(Phase::Verify, n);
        let verdict = match &single {
            Some((out, _, _)) => Some((
                compare(results, out, tolerance.as_ref(), interrupt).map_err(stop)?,
                match (reducer, reduced) {
                    (Some(reducer), Some(r)) => Some(
                        reduce_like(reducer, &r, out, interrupt)
                            .map_err(stop)?
                            .map_err(Error::Ipc)?,
                    ),
                    _ => None,
                },
            )),
            None => None,
        };
        let sum = checksum_until(results, interrupt).map_err(stop)?;
        if tracing {
            phases.0.borrow_mut().push(TracePhase {
                name: "verify".into(),
                start_ns: verify_ns,
                end_ns: monotonic_ns(),
            });
        }
        Ok((
            single.map(|(_, took, os)| (took, os)),
            verdict,
            sum,
            began.elapsed(),
        ))
    };
    let mut start_method = None;
    let (wall, start, stats, (baseline, verdict, sum, verify)) = match options.mode {
        Mode::Processes => {
            if options.pool.huge_pages {
                // Refuse before any worker starts when too few huge pages are free.
                let bytes = n.saturating_mul(std::mem::size_of::<W::Output>() as u64);
                crate::engine::pool::huge_pages_for(bytes)?;
            }
            let began = Instant::now();
            let mut pool =
                phases.time(tracing, "start workers", || pool_builder(options).build())?;
            let spawn = pool.spawn_time();
            start_method = Some(StartedWith::of(&pool));
            let want = Want {
                output: true,
                reduce_slot: reducer.map_or(0, |r| r.slot()),
            };
            let run = pool.run_want(workload, n, &job_options(options), want)?;
            let wall = began.elapsed();
            let mut stats = run.stats().clone();
            let reduced = combine(run.reduced_chunks().to_vec(), &mut stats)?;
            let checked = verify(run.results(), reduced, &mut early)?;
            inspect(run.results());
            drop(run);
            pool.shutdown();
            (wall, spawn, stats, checked)
        }
        Mode::Threads => {
            let chunk_size = options.job.chunk_size.or_else(|| {
                W::WAITS
                    .then(|| crate::engine::schedule::waiting_chunk_size(n, options.pool.workers))
            });
            let dispenser =
                Dispenser::new(options.job.schedule, n, options.pool.workers, chunk_size);
            let chunk_size = dispenser.chunk_size();
            let mut run = run_threads(local, dispenser, options.pool.workers, interrupt, reducer)?;
            let mut stats = in_process_stats(
                n,
                chunk_size,
                run.chunks,
                run.wall,
                std::mem::take(&mut run.workers),
                options,
            );
            let reduced = combine(std::mem::take(&mut run.reduced), &mut stats)?;
            let checked = verify(&run.output, reduced, &mut early)?;
            inspect(&run.output);
            (run.wall, run.start, stats, checked)
        }
        Mode::Single => {
            let (output, wall, os) = run_kernel(local, n, interrupt)?;
            let worker = WorkerStats {
                chunks: u64::from(n > 0),
                compute_s: wall.as_secs_f64(),
                cpu_s: os.map(|o| o.cpu_s),
                minor_faults: os.map(|o| o.minor_faults),
                major_faults: os.map(|o| o.major_faults),
                voluntary_switches: os.map(|o| o.voluntary_switches),
                involuntary_switches: os.map(|o| o.involuntary_switches),
                ..WorkerStats::idle(0, std::process::id())
            };
            let mut stats =
                in_process_stats(n, n.max(1), u64::from(n > 0), wall, vec![worker], options);
            // One chunk, the whole job (none for n = 0).
            let parts = match reducer {
                Some(reducer) if n > 0 => vec![ReducedChunk {
                    range: 0..n,
                    acc: reducer.reduce_chunk(0..n, &output),
                }],
                _ => Vec::new(),
            };
            let reduced = combine(parts, &mut stats)?;
            let checked = verify(&output, reduced, &mut early)?;
            inspect(&output);
            (wall, Duration::ZERO, stats, checked)
        }
    };
    let (mismatch, baseline_reduction) = match verdict {
        Some((mismatch, reduction)) => (mismatch, reduction),
        None => (None, None),
    };
    let mut stats = stats;
    phases.into_trace(&mut stats);
    Ok(Round {
        wall,
        start,
        start_method,
        stats,
        baseline: baseline.map(|b| b.0),
        baseline_os: baseline.and_then(|b| b.1),
        mismatch,
        baseline_reduction,
        checksum: sum,
        verify,
        output: None,
    })
}

/// One round streamed to `path` in bounded memory; verification happens window by window.
fn stream_round<W: Workload>(
    workload: &W,
    local: &W,
    n: u64,
    options: &RunOptions,
    path: &std::path::Path,
) -> Result<Round> {
    // Opened before any worker starts, so a path that cannot be written (a missing
    // directory, a name too long, a FIFO with no reader) is refused up front.
    let output = crate::lab::output::OutputFile::create(path)
        .map_err(|e| Error::invalid("output", format!("`output` {}: {e}", path.display())))?;
    let cannot =
        |e: std::io::Error| Error::invalid("output", format!("`output` {}: {e}", path.display()));
    let file = output.file().try_clone().map_err(cannot)?;
    let mut sink = FileSink::new(local, file, path, options.baseline);
    let began = Instant::now();
    let phases = Phases::default();
    let result = (|| {
        let mut pool = phases.time(options.job.trace, "start workers", || {
            pool_builder(options).build()
        })?;
        let spawn = pool.spawn_time();
        let method = StartedWith::of(&pool);
        let window = window_elems(options.window_bytes, std::mem::size_of::<W::Output>());
        let stats =
            pool.stream_with(workload, n, &job_options(options), window, RING, &mut sink)?;
        pool.shutdown();
        Ok((spawn, method, stats))
    })();
    // The file gets its name only when the run succeeded and its output was verified (or
    // verification was turned off): a failed, interrupted or wrong run leaves no partial
    // file, and an older file of that name as it was.
    let (spawn, start_method, mut stats) = match result.and_then(|done| {
        if sink.mismatch.is_none() {
            output.persist().map_err(|e| {
                Error::Output(format!("cannot give {} its name: {e}", path.display()))
            })?;
        }
        Ok(done)
    }) {
        Ok(done) => done,
        // Other errors (an interrupt, a chunk out of retries) keep their kind, and so their
        // exit code; the partial output is gone all the same.
        Err(Error::Output(message)) => {
            return Err(Error::Output(format!(
                "{message}; {} was not written",
                path.display()
            )));
        }
        Err(other) => return Err(other),
    };
    let wall = began.elapsed();
    phases.into_trace(&mut stats);
    Ok(Round {
        wall,
        start: spawn,
        start_method: Some(start_method),
        stats,
        baseline: options.baseline.then_some(sink.baseline),
        baseline_os: None,
        checksum: sink.checksum(),
        mismatch: sink.mismatch,
        baseline_reduction: None,
        verify: Duration::ZERO,
        output: Some(OutputReport {
            path: path.display().to_string(),
            bytes: sink.bytes,
            windows: sink.windows,
            window_bytes: window_elems(options.window_bytes, std::mem::size_of::<W::Output>())
                * std::mem::size_of::<W::Output>() as u64,
            write_s: sink.write.as_secs_f64(),
        }),
    })
}

fn pool_builder(options: &RunOptions) -> PoolBuilder {
    PoolBuilder::from(options.pool.clone())
}

fn job_options(options: &RunOptions) -> JobOptions {
    options.job.clone()
}

pub(crate) fn in_process_stats(
    n: u64,
    chunk_size: u64,
    chunks: u64,
    wall: Duration,
    workers: Vec<WorkerStats>,
    options: &RunOptions,
) -> JobStats {
    let tally = Tally {
        n,
        wall,
        workers,
        inflight: options.pool.inflight,
        chunk_size,
        chunks,
        schedule: options.job.schedule,
        transport: options.job.transport,
        dispatch: options.job.dispatch,
        ..Tally::default()
    };
    // No pool: nothing crossed a channel, nobody was supervised.
    JobStats::new(tally, Supervised::default())
}

/// The report of the measured rounds: details from the last, timings over all (the
/// machine's load read once, at the end: see [`build_report_loaded`]).
#[cfg(feature = "mpi")]
pub(crate) fn build_report<W: Workload>(
    workload: &W,
    options: &RunOptions,
    meta: Meta,
    machine: &Machine,
    rounds: Vec<Round>,
) -> Report {
    let now = LoadSnapshot::now();
    build_report_loaded(workload, options, meta, machine, rounds, (now, now))
}

/// [`build_report`], with the machine's load at the run's start and end.
pub(crate) fn build_report_loaded<W: Workload>(
    workload: &W,
    options: &RunOptions,
    meta: Meta,
    machine: &Machine,
    mut rounds: Vec<Round>,
    (load_start, load_end): (LoadSnapshot, LoadSnapshot),
) -> Report {
    let walls: Vec<f64> = rounds.iter().map(|r| r.wall.as_secs_f64()).collect();
    let bases: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.baseline.map(|d| d.as_secs_f64()))
        .collect();
    let verified_all = options.baseline.then(|| {
        rounds.iter().all(|r| {
            r.mismatch.is_none() && r.baseline_reduction.as_ref().is_none_or(|c| c.matches)
        })
    });
    let pool_s = summarize(&walls).expect("at least one round");
    let baseline_s = summarize(&bases);
    let repeats = (rounds.len() > 1).then(|| Repeats {
        runs: rounds.len(),
        warmup: options.warmup,
        baseline_s,
        pool_s,
        speedup: baseline_s.map(|b| ratio(&b, &pool_s)),
    });
    let last = rounds.pop().expect("at least one round");
    let mismatch = rounds
        .iter()
        .chain(std::iter::once(&last))
        .find_map(|r| r.mismatch.clone());
    let stats = last.stats;
    let n = stats.n;
    let workers = match options.mode {
        Mode::Single => 1,
        _ => options.pool.workers,
    };
    let pool_wall_s = pool_s.mean;
    let baseline_wall_s = baseline_s.map(|b| b.mean);
    let speedup = baseline_wall_s.map(|b| b / pool_wall_s);
    let mut warnings = Vec::new();
    // More workers than cores is the point for workloads that wait.
    if workers > machine.cores_logical && !W::WAITS {
        warnings.push(format!(
            "{workers} workers on {}: workers take turns on the cores, so expect no more \
             than {}× from them",
            crate::units::count(machine.cores_logical, "logical core"),
            machine.cores_logical
        ));
    }
    let compute: Vec<f64> = stats.workers.iter().map(|w| w.compute_s).collect();
    let breakdown = Breakdown::new(
        last.wall.as_secs_f64(),
        last.start.as_secs_f64(),
        &stats.workers,
        last.verify.as_secs_f64(),
    );
    let param_bytes = crate::engine::input::param_bytes(workload);
    let baseline_estimated = options.baseline && workload.sequential_time(n).is_some();
    let contention = Contention::measure(
        &stats.workers,
        last.baseline
            .zip(last.baseline_os)
            .map(|(d, os)| (d.as_secs_f64(), os)),
        load_start,
        load_end,
    );
    let huge = crate::engine::shm::HugePages::read();
    let observations = Observations {
        cpu_share: contention.cpu_share_mean,
        switches: stats
            .workers
            .iter()
            .map(|w| w.voluntary_switches.zip(w.involuntary_switches))
            .try_fold((0, 0), |(v, i), w| w.map(|(wv, wi)| (v + wv, i + wi))),
        baseline_cpu_share: contention.baseline_cpu_share,
        load: (contention.load_start, contention.load_end),
        steal_share: contention.steal_share,
        huge_pages: options.pool.huge_pages && options.mode == Mode::Processes,
        huge_page_bytes: huge.as_ref().map(|h| h.page_bytes),
        huge_pages_free: huge.as_ref().map(|h| h.free),
        baseline_estimated,
        param_bytes,
        workers,
        cores_logical: machine.cores_logical,
        n,
        chunks: stats.chunks,
        chunk_size: stats.chunk_size,
        pool_wall_s: last.wall.as_secs_f64(),
        spawn_s: last.start.as_secs_f64(),
        baseline_wall_s: last.baseline.map(|d| d.as_secs_f64()),
        threads_wall_s: (options.mode == Mode::Threads).then_some(last.wall.as_secs_f64()),
        compute_s: compute.clone(),
        mean_chunk_compute_s: stats.chunk_compute_mean_s,
        dispatch_per_chunk_s: stats.dispatch_per_chunk_s,
        dispatch: (options.mode == Mode::Processes).then_some(stats.dispatch),
        output_bytes: n * std::mem::size_of::<W::Output>() as u64,
        schedule: stats.schedule.to_string(),
        io_bound_hint: W::WAITS,
        pool_minor_faults: stats
            .workers
            .iter()
            .map(|w| w.minor_faults)
            .sum::<Option<u64>>(),
        baseline_minor_faults: last.baseline_os.map(|o| o.minor_faults),
    };
    Report {
        meta,
        workload: W::NAME.to_string(),
        // A shared `Input` field shows as its size, not its data.
        params: match crate::engine::input::describing(|| serde_json::to_value(workload)) {
            // A workload without parameters (a unit struct) reads better as `{}`.
            Ok(serde_json::Value::Null) | Err(_) => serde_json::json!({}),
            Ok(value) => value,
        },
        mode: options.mode,
        start: last.start_method.map(|s| s.method),
        schedule: stats.schedule,
        transport: (options.mode == Mode::Processes).then_some(stats.transport),
        dispatch: (options.mode == Mode::Processes).then_some(stats.dispatch),
        pinned: options.pool.pin && options.mode == Mode::Processes,
        n,
        workers,
        workers_from: options.workers_from,
        chunk_size: stats.chunk_size,
        chunks: stats.chunks,
        auto_chunk: stats.auto_chunk,
        inflight: stats.inflight,
        cores_logical: machine.cores_logical,
        cores_physical: machine.cores_physical,
        baseline_wall_s,
        baseline_estimated,
        baseline_os: last.baseline_os,
        pool_wall_s,
        spawn_s: last.start.as_secs_f64(),
        start_per_worker_s: last
            .start_method
            .filter(|s| s.workers > 0)
            .map(|s| last.start.as_secs_f64() / s.workers as f64),
        run_s: last.wall.saturating_sub(last.start).as_secs_f64(),
        compute_s: compute.iter().sum(),
        compute_max_s: compute.iter().copied().fold(0.0, f64::max),
        breakdown,
        chunk_rtt_mean_s: stats.chunk_rtt_mean_s,
        chunk_compute_mean_s: stats.chunk_compute_mean_s,
        dispatch_per_chunk_s: stats.dispatch_per_chunk_s,
        speedup,
        efficiency: speedup.map(|s| s / workers as f64),
        caveats: caveats(
            &observations,
            &Rounds {
                pool_s: walls,
                baseline_s: bases,
                warmup: options.warmup,
            },
            speedup,
        ),
        contention,
        verified: verified_all,
        mismatch,
        tolerance: workload.tolerance(),
        checksum: last.checksum,
        ipc_messages: stats.ipc_messages,
        ipc_bytes: stats.ipc_bytes,
        channel_result_bytes: stats.channel_result_bytes,
        shm_bytes: stats.shm_bytes,
        input_bytes: crate::engine::input::input_bytes(workload),
        param_bytes,
        claims: stats.claims,
        worker_sleeps: stats.worker_sleeps,
        parent_sleeps: stats.parent_sleeps,
        wake_messages: stats.wake_messages,
        per_worker: stats.workers,
        restarts: stats.restarts,
        recycles: stats.recycles,
        retried_chunks: stats.retried_chunks,
        deaths: stats.deaths,
        reduction: stats.reduction,
        baseline_reduction: last.baseline_reduction.map(|c| c.baseline),
        repeat: repeats,
        output: last.output,
        parent_peak_rss_bytes: crate::engine::sys::process_usage(std::process::id())
            .map(|(_, rss)| rss),
        advice: advise(&observations),
        warnings,
        trace: stats.trace,
        #[cfg(feature = "mpi")]
        mpi: None,
    }
}

/// The single-process output reduced over the pool's chunks, in the same order, and
/// compared with the pool's reduction byte for byte.
pub(crate) fn reduce_like<T>(
    reducer: &dyn ChunkReducer<T>,
    pool: &RoundReduction,
    single: &[T],
    interrupt: &crate::engine::interrupt::Interrupt,
) -> std::result::Result<std::result::Result<ReductionCheck, String>, Stopped> {
    let mut accs = Vec::with_capacity(pool.parts.len());
    for p in &pool.parts {
        if let Some(signal) = interrupt.requested() {
            return Err(Stopped {
                signal,
                done: p.range.start,
            });
        }
        let (lo, hi) = (p.range.start as usize, p.range.end as usize);
        accs.push(reducer.reduce_chunk(p.range.clone(), &single[lo..hi]));
    }
    let combined = match reducer.combine(&mut accs.iter().map(Vec::as_slice)) {
        Ok(combined) => combined,
        Err(message) => return Ok(Err(message)),
    };
    Ok(Ok(ReductionCheck {
        baseline: reducer.describe(&combined),
        matches: combined == pool.combined,
    }))
}

/// Refuses an element type the lab cannot verify, before anything starts: a zero-sized one,
/// or one the workload's tolerance does not fit.
pub(crate) fn check_element<W: Workload>(workload: &W) -> Result<()> {
    let size = std::mem::size_of::<W::Output>();
    if size == 0 {
        return Err(Error::invalid_input(format!(
            "workload `{}` has a zero-sized output element ({}): an element must hold at \
             least one byte",
            W::NAME,
            std::any::type_name::<W::Output>()
        )));
    }
    if let Some(tolerance) = workload.tolerance() {
        tolerance.check(size).map_err(|why| {
            Error::invalid_input(format!(
                "workload `{}` with {} elements: {why}",
                W::NAME,
                std::any::type_name::<W::Output>()
            ))
        })?;
    }
    Ok(())
}

/// The options set in `options` that a mode or backend may not take, as the table of
/// options names them (`lab::options`): a mode other than processes, faults to inject, a
/// transport other than shared memory, an output file. (The others a run cannot tell from
/// their defaults; the command refuses them while parsing.)
pub(crate) fn options_set(options: &RunOptions) -> impl Iterator<Item = &'static str> {
    [
        ("mode", options.mode != Mode::Processes),
        ("faults", !options.job.faults.is_empty()),
        ("transport", options.job.transport != Transport::Shm),
        ("output", options.output.is_some()),
        ("deadline", options.job.deadline.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
}

/// Refuses bad options and jobs that cannot fit, before anything starts.
fn validate(
    name: &str,
    n: u64,
    elem_size: usize,
    waits: bool,
    options: &RunOptions,
    machine: &Machine,
) -> Result<()> {
    // The same checks a pool and its jobs make, before anything starts in any mode.
    crate::engine::pool::check_counts(
        options.pool.workers,
        options.pool.inflight,
        options.job.chunk_size,
    )?;
    if options.mode == Mode::Processes {
        crate::engine::pool::check_dispatch(&options.job)?;
    }
    // What this mode takes, from the one table of options (`lab::options`).
    let runner = match options.mode {
        Mode::Processes => Runner::Processes,
        Mode::Threads => Runner::Threads,
        Mode::Single => Runner::Single,
    };
    if let Some(refusal) = first_refused(runner, options_set(options)) {
        return Err(refusal);
    }
    // A cancel token has no flag, so no row in the table: the same rule, here.
    if options.mode != Mode::Processes && options.job.cancel.is_some() {
        return Err(Error::invalid(
            "cancel",
            format!(
                "`cancel` stops the worker processes' job: in `mode` {} there is none to stop",
                options.mode
            ),
        ));
    }
    crate::engine::pool::check_deadline(options.job.deadline)?;
    if options.repeat == 0 {
        return Err(Error::invalid(
            "repeat",
            "`repeat` must be at least 1 (got 0)",
        ));
    }
    for (option, value) in [("repeat", options.repeat), ("warmup", options.warmup)] {
        if value > MAX_ROUNDS {
            return Err(Error::invalid(
                option,
                format!("`{option}` {value} is too many rounds: at most {MAX_ROUNDS}"),
            ));
        }
    }
    let rounds = options.warmup + options.repeat;
    if rounds > MAX_ROUNDS {
        return Err(Error::invalid(
            "warmup",
            format!(
                "`warmup` {} plus `repeat` {} is {rounds} rounds: at most {MAX_ROUNDS} in all",
                options.warmup, options.repeat
            ),
        ));
    }
    let bytes = match options.output {
        // Streaming holds a ring of windows, and verifies one window at a time.
        Some(_) => {
            let window =
                u128::from(window_elems(options.window_bytes, elem_size)) * elem_size as u128;
            (window * u128::from(RING)).min(u128::from(n) * elem_size as u128)
        }
        None => u128::from(n) * elem_size as u128,
    };
    let mut parts = vec![("shared results", bytes)];
    if options.baseline {
        parts.push(("single-process baseline", bytes));
    }
    check_memory(&format!("{name} with n = {n}"), &parts, machine)?;
    // The chunk count, when it is known before the job (the pool checks the other cases):
    // the chunk size is fixed, and chunks are not cut at streaming windows.
    let measured = options.job.auto_chunk && options.job.schedule != Schedule::Static && n > 0;
    if !measured
        && options.output.is_none()
        && let Some(last) = options.job.faults.iter().map(|f| f.chunk).max()
    {
        let chunk_size = options.job.chunk_size.or_else(|| {
            waits.then(|| crate::engine::schedule::waiting_chunk_size(n, options.pool.workers))
        });
        let dispenser = Dispenser::new(options.job.schedule, n, options.pool.workers, chunk_size);
        crate::engine::fault::check_faults(&options.job.faults, dispenser.chunks_up_to(last))?;
    }
    match options.mode {
        Mode::Processes => crate::engine::limits::check_worker_limits(options.pool.workers, true)?,
        Mode::Threads => crate::engine::limits::check_thread_limits(options.pool.workers)?,
        Mode::Single => {}
    }
    Ok(())
}
