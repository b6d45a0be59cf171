//! A whole measured run: validate, start a pool, run the job, run it again in one process,
//! compare, and report. This is what `procpool --workers 8 squares 10000000` does.
//!
//! With `--repeat R --warmup K`, the baseline and the parallel run alternate K + R times
//! (the order flips every round, so drift hits both alike); every round is verified, and the
//! last K are discarded before the statistics.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::engine::limits::{Machine, check_memory};
use crate::engine::pool::{JobOptions, JobStats, PoolBuilder, PoolOptions, WorkerStats};
use crate::engine::protocol::Transport;
use crate::engine::schedule::{Dispenser, Schedule};
use crate::error::{Error, Phase, Result};
use crate::lab::advice::{Observations, advise};
use crate::lab::baseline::{Mismatch, Stopped, checksum_until, compare, run_kernel, run_single};
use crate::lab::measure::{ratio, summarize};
use crate::lab::model::{Breakdown, Mode, OutputReport, Repeats, Report};
use crate::lab::stream::{FileSink, RING, window_elems};
use crate::lab::threads::run_threads;
use crate::workload::Workload;

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
    /// Stream the output to this file in bounded memory instead of holding it.
    pub output: Option<PathBuf>,
    /// Window length in bytes when streaming.
    pub window_bytes: u64,
    /// Processes (the pool), threads, or a single process.
    pub mode: Mode,
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

/// What one round measured.
struct Round {
    wall: Duration,
    start: Duration,
    stats: JobStats,
    baseline: Option<Duration>,
    mismatch: Option<Mismatch>,
    baseline_reduction: Option<u64>,
    checksum: u64,
    verify: Duration,
    output: Option<OutputReport>,
}

/// Like [`run`], and hands the output (after verification, before it is freed) to `inspect`:
/// to write an image, a file, or check something of your own.
pub fn run_inspect<W: Workload>(
    workload: &W,
    n: u64,
    options: &RunOptions,
    inspect: impl FnOnce(&[W::Output]),
) -> Result<Report> {
    let machine = Machine::read();
    validate(
        W::NAME,
        n,
        std::mem::size_of::<W::Output>(),
        W::WAITS,
        options,
        &machine,
    )?;
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
        let r = run_round(workload, &local, n, options, baseline_first, hand_over)?;
        if round >= options.warmup {
            measured.push(r);
        }
    }
    Ok(build_report(workload, options, &machine, measured))
}

/// What verifying one round found: the single-process time, the first mismatch and the
/// single-process reduction (when there was a baseline), the checksum, and the time taken.
type Checked = (
    Option<Duration>,
    Option<(Option<Mismatch>, Option<u64>)>,
    u64,
    Duration,
);

/// One round: the parallel run and (unless skipped) the single-process run, verified.
fn run_round<W: Workload>(
    workload: &W,
    local: &W,
    n: u64,
    options: &RunOptions,
    baseline_first: bool,
    inspect: impl FnOnce(&[W::Output]),
) -> Result<Round> {
    if let Some(path) = &options.output {
        return stream_round(workload, local, n, options, path);
    }
    let interrupt = &options.pool.supervision.interrupt;
    let mut early = match options.baseline && baseline_first {
        true => Some(run_single(local, n, interrupt)?),
        false => None,
    };
    let verify = |results: &[W::Output],
                  chunk_size: u64,
                  early: &mut Option<(Vec<W::Output>, Duration)>|
     -> Result<Checked> {
        let single = match early.take() {
            Some(single) => Some(single),
            None if options.baseline => Some(run_single(local, n, interrupt)?),
            None => None,
        };
        let began = Instant::now();
        let stop = |s: Stopped| s.into_error(Phase::Verify, n);
        let verdict = match &single {
            Some((out, _)) => Some((
                compare(results, out, interrupt).map_err(stop)?,
                reduce_chunks(local, out, chunk_size, interrupt).map_err(stop)?,
            )),
            None => None,
        };
        let sum = checksum_until(results, interrupt).map_err(stop)?;
        Ok((single.map(|(_, took)| took), verdict, sum, began.elapsed()))
    };
    let (wall, start, stats, (baseline, verdict, sum, verify)) = match options.mode {
        Mode::Processes => {
            let began = Instant::now();
            let mut pool = pool_builder(options).build()?;
            let spawn = pool.spawn_time();
            let run = pool.run_with(workload, n, &job_options(options))?;
            let wall = began.elapsed();
            let stats = run.stats().clone();
            let checked = verify(run.results(), stats.chunk_size, &mut early)?;
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
            let run = run_threads(local, dispenser, options.pool.workers, interrupt)?;
            let stats = in_process_stats(
                n,
                chunk_size,
                run.chunks,
                run.wall,
                run.workers,
                run.reduction,
                options,
            );
            let checked = verify(&run.output, chunk_size, &mut early)?;
            inspect(&run.output);
            (run.wall, run.start, stats, checked)
        }
        Mode::Single => {
            let (output, wall) = run_kernel(local, n, interrupt)?;
            let worker = WorkerStats {
                id: 0,
                pid: std::process::id(),
                chunks: u64::from(n > 0),
                compute_s: wall.as_secs_f64(),
                cpu_s: None,
                peak_rss_bytes: None,
                idle_end_s: 0.0,
                cpu: None,
                claims: 0,
                dispatch_s: 0.0,
                sleeps: 0,
                setup_s: 0.0,
            };
            let stats = in_process_stats(
                n,
                n.max(1),
                u64::from(n > 0),
                wall,
                vec![worker],
                local.reduce(&output),
                options,
            );
            let checked = verify(&output, n.max(1), &mut early)?;
            inspect(&output);
            (wall, Duration::ZERO, stats, checked)
        }
    };
    let (mismatch, baseline_reduction) = match verdict {
        Some((mismatch, reduction)) => (mismatch, reduction),
        None => (None, None),
    };
    Ok(Round {
        wall,
        start,
        stats,
        baseline,
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
    let cannot = |e: std::io::Error| {
        Error::invalid(
            "output",
            format!("`output`: cannot create {}: {e}", path.display()),
        )
    };
    // The file gets its name only when the run succeeds: a failed or interrupted run
    // leaves no partial file (and an older file of that name as it was).
    let output = crate::lab::stream::OutputFile::create(path).map_err(cannot)?;
    let file = output.file().try_clone().map_err(cannot)?;
    let mut sink = FileSink::new(local, file, path, options.baseline);
    let began = Instant::now();
    let result = (|| {
        let mut pool = pool_builder(options).build()?;
        let spawn = pool.spawn_time();
        let window = window_elems(options.window_bytes, std::mem::size_of::<W::Output>());
        let stats =
            pool.stream_with(workload, n, &job_options(options), window, RING, &mut sink)?;
        pool.shutdown();
        Ok((spawn, stats))
    })();
    let (spawn, stats) = match result.and_then(|done| {
        output
            .persist()
            .map_err(|e| Error::Output(format!("cannot give {} its name: {e}", path.display())))?;
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
    Ok(Round {
        wall,
        start: spawn,
        stats,
        baseline: options.baseline.then_some(sink.baseline),
        mismatch: sink.mismatch,
        baseline_reduction: sink.baseline_reduction,
        checksum: sink.checksum,
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

fn in_process_stats(
    n: u64,
    chunk_size: u64,
    chunks: u64,
    wall: Duration,
    workers: Vec<WorkerStats>,
    reduction: Option<u64>,
    options: &RunOptions,
) -> JobStats {
    JobStats {
        n,
        inflight: options.pool.inflight,
        chunk_size,
        chunks,
        wall,
        ipc_messages: 0,
        ipc_bytes: 0,
        shm_bytes: 0,
        workers,
        restarts: 0,
        recycles: 0,
        retried_chunks: 0,
        deaths: Vec::new(),
        reduction,
        schedule: options.job.schedule,
        transport: options.job.transport,
        auto_chunk: None,
        chunk_rtt_mean_s: 0.0,
        chunk_compute_mean_s: 0.0,
        channel_result_bytes: 0,
        dispatch: options.job.dispatch,
        claims: 0,
        worker_sleeps: 0,
        parent_sleeps: 0,
        wake_messages: 0,
        dispatch_per_chunk_s: 0.0,
        chunks_delivered: 0,
        stopped_early: false,
    }
}

/// The report of the measured rounds: details from the last, timings over all.
fn build_report<W: Workload>(
    workload: &W,
    options: &RunOptions,
    machine: &Machine,
    mut rounds: Vec<Round>,
) -> Report {
    let walls: Vec<f64> = rounds.iter().map(|r| r.wall.as_secs_f64()).collect();
    let bases: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.baseline.map(|d| d.as_secs_f64()))
        .collect();
    let verified_all = options.baseline.then(|| {
        rounds
            .iter()
            .all(|r| r.mismatch.is_none() && r.baseline_reduction == r.stats.reduction)
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
        .find_map(|r| r.mismatch);
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
            "{workers} workers on {} logical cores: workers take turns on the cores, so expect \
             no more than {}× from them",
            machine.cores_logical, machine.cores_logical
        ));
    }
    let compute: Vec<f64> = stats.workers.iter().map(|w| w.compute_s).collect();
    let breakdown = Breakdown::new(
        last.wall.as_secs_f64(),
        last.start.as_secs_f64(),
        &stats.workers,
        last.verify.as_secs_f64(),
    );
    let observations = Observations {
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
    };
    Report {
        workload: W::NAME.to_string(),
        params: match serde_json::to_value(workload) {
            // A workload without parameters (a unit struct) reads better as `{}`.
            Ok(serde_json::Value::Null) | Err(_) => serde_json::json!({}),
            Ok(value) => value,
        },
        mode: options.mode,
        start: (options.mode == Mode::Processes).then_some(options.pool.start),
        schedule: stats.schedule,
        transport: (options.mode == Mode::Processes).then_some(stats.transport),
        dispatch: (options.mode == Mode::Processes).then_some(stats.dispatch),
        pinned: options.pool.pin && options.mode == Mode::Processes,
        n,
        workers,
        chunk_size: stats.chunk_size,
        chunks: stats.chunks,
        auto_chunk: stats.auto_chunk,
        inflight: stats.inflight,
        cores_logical: machine.cores_logical,
        cores_physical: machine.cores_physical,
        baseline_wall_s,
        baseline_estimated: options.baseline && workload.sequential_time(n).is_some(),
        pool_wall_s,
        spawn_s: last.start.as_secs_f64(),
        run_s: last.wall.saturating_sub(last.start).as_secs_f64(),
        compute_s: compute.iter().sum(),
        compute_max_s: compute.iter().copied().fold(0.0, f64::max),
        breakdown,
        chunk_rtt_mean_s: stats.chunk_rtt_mean_s,
        chunk_compute_mean_s: stats.chunk_compute_mean_s,
        dispatch_per_chunk_s: stats.dispatch_per_chunk_s,
        speedup,
        efficiency: speedup.map(|s| s / workers as f64),
        verified: verified_all,
        mismatch,
        checksum: last.checksum,
        ipc_messages: stats.ipc_messages,
        ipc_bytes: stats.ipc_bytes,
        channel_result_bytes: stats.channel_result_bytes,
        shm_bytes: stats.shm_bytes,
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
        baseline_reduction: last.baseline_reduction,
        repeat: repeats,
        output: last.output,
        parent_peak_rss_bytes: crate::engine::sys::process_usage(std::process::id())
            .map(|(_, rss)| rss),
        advice: advise(&observations),
        warnings,
    }
}

/// The workload's reduction over `output` cut into chunks of `chunk_size`, added up as the
/// pool adds its chunks' values. (For a reduction that adds up, the chunking does not
/// matter; the pool's own chunking is used so that any reduction compares like for like.)
fn reduce_chunks<W: Workload>(
    workload: &W,
    output: &[W::Output],
    chunk_size: u64,
    interrupt: &crate::engine::interrupt::Interrupt,
) -> std::result::Result<Option<u64>, Stopped> {
    let size = usize::try_from(chunk_size).unwrap_or(usize::MAX).max(1);
    let mut total = None;
    for (k, chunk) in output.chunks(size).enumerate() {
        if let Some(signal) = interrupt.requested() {
            let done = (k as u64).saturating_mul(size as u64);
            return Err(Stopped { signal, done });
        }
        total = match (total, workload.reduce(chunk)) {
            (acc, None) => acc,
            (None, Some(r)) => Some(r),
            (Some(a), Some(r)) => Some(u64::wrapping_add(a, r)),
        };
    }
    Ok(total)
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
    if options.mode != Mode::Processes && !options.job.faults.is_empty() {
        return Err(Error::invalid(
            "faults",
            format!(
                "fault injection (`faults`) needs `mode` processes: in `mode` {} a fault would \
                 hit procpool itself",
                options.mode
            ),
        ));
    }
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
    if options.mode != Mode::Processes && options.job.transport != Transport::Shm {
        return Err(Error::invalid(
            "transport",
            format!(
                "`transport` channel needs `mode` processes (in `mode` {} nothing crosses a \
                 channel)",
                options.mode
            ),
        ));
    }
    if options.output.is_some() && options.mode != Mode::Processes {
        return Err(Error::invalid(
            "output",
            format!(
                "`output` streams through worker processes: use `mode` processes (not {})",
                options.mode
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
