//! A whole measured run: validate, start a pool, run the job, run it again in one process,
//! compare, and report. This is what `procpool --workers 8 squares 10000000` does.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::baseline::{checksum, first_mismatch, run_single};
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::limits::{Machine, check_memory};
use crate::pool::{DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_INFLIGHT, JobOptions, Pool, Supervision};
use crate::report::Report;
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
        }
    }
}

/// Runs `workload` on `0..n` across a fresh pool and in one process, and reports.
///
/// Bad input is refused with [`Error::InvalidInput`] before any process starts. A run whose
/// outputs differ is not an error: the report says `verified: false` and where.
pub fn run<W: Workload>(workload: &W, n: u64, options: &RunOptions) -> Result<Report> {
    let machine = Machine::read();
    validate(
        W::NAME,
        n,
        std::mem::size_of::<W::Output>(),
        options,
        &machine,
    )?;

    let began = Instant::now();
    let mut pool = Pool::builder()
        .workers(options.workers)
        .inflight(options.inflight)
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
    let pool_wall = began.elapsed();
    let stats = run.stats().clone();
    let results = run.results();

    let (baseline_wall, mismatch) = if options.baseline {
        let (single, took) = run_single(workload, n);
        (Some(took), first_mismatch(results, &single))
    } else {
        (None, None)
    };
    let sum = checksum(results);
    drop(run);
    pool.shutdown();

    let pool_wall_s = pool_wall.as_secs_f64();
    let baseline_wall_s = baseline_wall.map(|d| d.as_secs_f64());
    let speedup = baseline_wall_s.map(|b| b / pool_wall_s);
    let mut warnings = Vec::new();
    if options.workers > machine.cores_logical {
        warnings.push(format!(
            "{} workers on {} logical cores: workers take turns on the cores, so expect no \
             more than {}× from them",
            options.workers, machine.cores_logical, machine.cores_logical
        ));
    }
    Ok(Report {
        workload: W::NAME.to_string(),
        params: match serde_json::to_value(workload) {
            // A workload without parameters (a unit struct) reads better as `{}`.
            Ok(serde_json::Value::Null) | Err(_) => serde_json::json!({}),
            Ok(value) => value,
        },
        n,
        workers: options.workers,
        chunk_size: stats.chunk_size,
        chunks: stats.chunks,
        inflight: options.inflight,
        cores_logical: machine.cores_logical,
        cores_physical: machine.cores_physical,
        baseline_wall_s,
        pool_wall_s,
        spawn_s: spawn.as_secs_f64(),
        run_s: (pool_wall - spawn).as_secs_f64(),
        compute_s: stats.workers.iter().map(|w| w.compute_s).sum(),
        speedup,
        efficiency: speedup.map(|s| s / options.workers as f64),
        verified: options.baseline.then_some(mismatch.is_none()),
        mismatch,
        checksum: sum,
        ipc_messages: stats.ipc_messages,
        ipc_bytes: stats.ipc_bytes,
        shm_bytes: stats.shm_bytes,
        per_worker: stats.workers,
        restarts: stats.restarts,
        retried_chunks: stats.retried_chunks,
        deaths: stats.deaths,
        warnings,
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
    crate::limits::check_worker_limits(options.workers)
}
