//! A whole measured run: validate, start a pool, run the job, run it again in one process,
//! compare, and report. This is what `procpool --workers 8 squares 10000000` does.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::baseline::{checksum, first_mismatch, run_single};
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::limits::{Machine, check_memory};
use crate::pool::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_INFLIGHT, JobOptions, JobStats, Pool, StartMethod,
    Supervision, WorkerStats,
};
use crate::report::Report;
use crate::schedule::ChunkPlan;
use crate::threads::run_threads;
use crate::workload::Workload;

/// How to run a job.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Worker processes.
    pub workers: usize,
    /// Chunk length (default: about four chunks per worker).
    pub chunk_size: Option<u64>,
    /// Chunks in flight per worker.
    pub inflight: usize,
    /// Run the single-process baseline and verify against it.
    pub baseline: bool,
    /// Worker executable (default: the current executable).
    pub worker_exe: Option<PathBuf>,
    /// Deadline for workers to connect back.
    pub handshake_timeout: Duration,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// Retries, restarts, timeouts, grace periods and the interrupt flag.
    pub supervision: Supervision,
    /// Processes (the pool), threads, or a single process.
    pub mode: Mode,
    /// How worker processes start (processes mode only).
    pub start: StartMethod,
}

/// Which way to run the job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Worker processes writing into shared memory: the pool.
    #[default]
    Processes,
    /// The same kernel on threads of this process, sharing one output buffer.
    Threads,
    /// One process, one call of the kernel over the whole range.
    Single,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Processes => "processes",
            Mode::Threads => "threads",
            Mode::Single => "single",
        })
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: Machine::read().cores_logical,
            chunk_size: None,
            inflight: DEFAULT_INFLIGHT,
            baseline: true,
            worker_exe: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            faults: Vec::new(),
            supervision: Supervision::default(),
            mode: Mode::Processes,
            start: StartMethod::Spawn,
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
        options,
        &machine,
    )?;

    match options.mode {
        Mode::Processes => {
            let began = Instant::now();
            let mut pool = Pool::builder()
                .workers(options.workers)
                .inflight(options.inflight)
                .start(options.start)
                .handshake_timeout(options.handshake_timeout)
                .supervision(options.supervision.clone());
            if let Some(exe) = &options.worker_exe {
                pool = pool.worker_exe(exe);
            }
            let mut pool = pool.build()?;
            let spawn = pool.spawn_time();
            let job = JobOptions {
                chunk_size: options.chunk_size,
                faults: options.faults.clone(),
            };
            let run = pool.run_with(workload, n, &job)?;
            let wall = began.elapsed();
            let stats = run.stats().clone();
            let report = finish(
                workload,
                options,
                &machine,
                run.results(),
                stats,
                wall,
                spawn,
            );
            inspect(run.results());
            drop(run);
            pool.shutdown();
            Ok(report)
        }
        Mode::Threads => {
            let plan = plan_for(n, options);
            let run = run_threads(workload, plan, options.workers);
            let stats = JobStats {
                n,
                chunk_size: plan.chunk_size(),
                chunks: plan.len(),
                wall: run.wall,
                ipc_messages: 0,
                ipc_bytes: 0,
                shm_bytes: 0,
                workers: run.workers,
                restarts: 0,
                retried_chunks: 0,
                deaths: Vec::new(),
                reduction: run.reduction,
            };
            let report = finish(
                workload,
                options,
                &machine,
                &run.output,
                stats,
                run.wall,
                run.start,
            );
            inspect(&run.output);
            Ok(report)
        }
        Mode::Single => {
            let (output, wall) = run_single(workload, n);
            let plan = ChunkPlan::new(n, n.max(1));
            let stats = JobStats {
                n,
                chunk_size: plan.chunk_size(),
                chunks: plan.len(),
                wall,
                ipc_messages: 0,
                ipc_bytes: 0,
                shm_bytes: 0,
                workers: vec![WorkerStats {
                    id: 0,
                    pid: std::process::id(),
                    chunks: plan.len(),
                    compute_s: wall.as_secs_f64(),
                }],
                restarts: 0,
                retried_chunks: 0,
                deaths: Vec::new(),
                reduction: workload.reduce(&output),
            };
            let report = finish(
                workload,
                options,
                &machine,
                &output,
                stats,
                wall,
                Duration::ZERO,
            );
            inspect(&output);
            Ok(report)
        }
    }
}

fn plan_for(n: u64, options: &RunOptions) -> ChunkPlan {
    match options.chunk_size {
        Some(cs) => ChunkPlan::new(n, cs),
        None => ChunkPlan::for_workers(n, options.workers),
    }
}

/// Runs the baseline, verifies `results` against it and builds the report.
fn finish<W: Workload>(
    workload: &W,
    options: &RunOptions,
    machine: &Machine,
    results: &[W::Output],
    stats: JobStats,
    wall: Duration,
    start: Duration,
) -> Report {
    let n = stats.n;
    let (baseline_wall, mismatch, baseline_reduction) = if options.baseline {
        let (single, took) = run_single(workload, n);
        // The same reduction over the same chunks, so the two can be compared.
        let reduction = reduce_chunks(workload, &single, stats.chunk_size);
        (Some(took), first_mismatch(results, &single), reduction)
    } else {
        (None, None, None)
    };
    let reductions_agree = baseline_reduction == stats.reduction;
    let sum = checksum(results);
    let workers = match options.mode {
        Mode::Single => 1,
        _ => options.workers,
    };
    let pool_wall_s = wall.as_secs_f64();
    let baseline_wall_s = baseline_wall.map(|d| d.as_secs_f64());
    let speedup = baseline_wall_s.map(|b| b / pool_wall_s);
    let mut warnings = Vec::new();
    if workers > machine.cores_logical {
        warnings.push(format!(
            "{workers} workers on {} logical cores: workers take turns on the cores, so expect \
             no more than {}× from them",
            machine.cores_logical, machine.cores_logical
        ));
    }
    Report {
        workload: W::NAME.to_string(),
        params: match serde_json::to_value(workload) {
            // A workload without parameters (a unit struct) reads better as `{}`.
            Ok(serde_json::Value::Null) | Err(_) => serde_json::json!({}),
            Ok(value) => value,
        },
        mode: options.mode,
        start: (options.mode == Mode::Processes).then_some(options.start),
        n,
        workers,
        chunk_size: stats.chunk_size,
        chunks: stats.chunks,
        inflight: options.inflight,
        cores_logical: machine.cores_logical,
        cores_physical: machine.cores_physical,
        baseline_wall_s,
        pool_wall_s,
        spawn_s: start.as_secs_f64(),
        run_s: (wall.saturating_sub(start)).as_secs_f64(),
        compute_s: stats.workers.iter().map(|w| w.compute_s).sum(),
        speedup,
        efficiency: speedup.map(|s| s / workers as f64),
        verified: options
            .baseline
            .then_some(mismatch.is_none() && reductions_agree),
        mismatch,
        checksum: sum,
        ipc_messages: stats.ipc_messages,
        ipc_bytes: stats.ipc_bytes,
        shm_bytes: stats.shm_bytes,
        per_worker: stats.workers,
        restarts: stats.restarts,
        retried_chunks: stats.retried_chunks,
        deaths: stats.deaths,
        reduction: stats.reduction,
        baseline_reduction,
        warnings,
    }
}

/// The workload's reduction over `output` cut into chunks of `chunk_size`, added up as the
/// pool adds its chunks' values.
fn reduce_chunks<W: Workload>(workload: &W, output: &[W::Output], chunk_size: u64) -> Option<u64> {
    let size = usize::try_from(chunk_size).unwrap_or(usize::MAX).max(1);
    output
        .chunks(size)
        .fold(None, |acc, chunk| match (acc, workload.reduce(chunk)) {
            (acc, None) => acc,
            (None, Some(r)) => Some(r),
            (Some(a), Some(r)) => Some(a.wrapping_add(r)),
        })
}

/// Refuses bad options and jobs that cannot fit, before anything starts.
fn validate(
    name: &str,
    n: u64,
    elem_size: usize,
    options: &RunOptions,
    machine: &Machine,
) -> Result<()> {
    if options.workers == 0 {
        return Err(Error::InvalidInput(
            "--workers must be at least 1 (got 0)".into(),
        ));
    }
    if options.chunk_size == Some(0) {
        return Err(Error::InvalidInput(
            "--chunk-size must be at least 1 (got 0)".into(),
        ));
    }
    if options.mode != Mode::Processes && !options.faults.is_empty() {
        return Err(Error::InvalidInput(format!(
            "--inject needs --mode processes: in --mode {} a fault would hit procpool itself",
            options.mode
        )));
    }
    if options.inflight == 0 {
        return Err(Error::InvalidInput(
            "--inflight must be at least 1 (got 0)".into(),
        ));
    }
    let bytes = u128::from(n) * elem_size as u128;
    let mut parts = vec![("shared results", bytes)];
    if options.baseline {
        parts.push(("single-process baseline", bytes));
    }
    check_memory(&format!("{name} with n = {n}"), &parts, machine)?;
    if options.mode == Mode::Processes {
        crate::limits::check_worker_limits(options.workers)?;
    }
    Ok(())
}
