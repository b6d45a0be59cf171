//! `procpool sweep`: the same job over a grid of worker counts and chunk sizes.
//!
//! Each point is a full measured run ([`crate::run()`]) with its own interleaved baseline
//! rounds, so every point is verified and its speedup compares like with like. The rows,
//! and Amdahl's law fitted to them, go to [`crate::report::sweep`] for the table, the plot
//! and the exporters.

use crate::error::{Error, Result};
use crate::measure::summarize;
use crate::report::Report;
use crate::report::sweep::{SweepRow, SweepTable};
use crate::run::{RunOptions, run};
use crate::schedule::Dispenser;
use crate::workload::Workload;

/// The grid to sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Worker counts (`--workers 1,2,4,8`).
    pub workers: Vec<usize>,
    /// Chunk sizes (`--chunk-size a,b,c`). Empty: one size for the whole sweep, the
    /// default for the largest worker count, so only the worker count varies.
    pub chunk_sizes: Vec<Option<u64>>,
    /// Everything else about each run (repeat, warmup, mode, …).
    pub run: RunOptions,
}

/// Runs the grid, calling `each` with every point's report as it finishes (for progress).
pub fn sweep<W: Workload>(
    workload: &W,
    n: u64,
    options: &SweepOptions,
    mut each: impl FnMut(&Report),
) -> Result<SweepTable> {
    if options.workers.is_empty() {
        return Err(Error::InvalidInput(
            "sweep needs at least one worker count: --workers 1,2,4".into(),
        ));
    }
    let chunk_sizes = if options.chunk_sizes.is_empty() {
        let most = options.workers.iter().copied().max().unwrap_or(1);
        let dispenser = Dispenser::new(options.run.schedule, n, most, None);
        vec![Some(dispenser.chunk_size())]
    } else {
        options.chunk_sizes.clone()
    };
    let mut rows = Vec::new();
    let mut baselines = Vec::new();
    let mut cores_logical = 0;
    for &workers in &options.workers {
        for &chunk_size in &chunk_sizes {
            let run_options = RunOptions {
                workers,
                chunk_size,
                ..options.run.clone()
            };
            let report = run(workload, n, &run_options)?;
            each(&report);
            cores_logical = report.cores_logical;
            let (pool_s, baseline_s) = match &report.repeat {
                Some(r) => (r.pool_s, r.baseline_s),
                None => (
                    summarize(&[report.pool_wall_s]).expect("one sample"),
                    report.baseline_wall_s.and_then(|b| summarize(&[b])),
                ),
            };
            if let Some(b) = baseline_s {
                baselines.push(b.mean);
            }
            rows.push(SweepRow::measured(
                workers,
                report.chunk_size,
                pool_s,
                baseline_s.as_ref(),
                report.verified,
            ));
        }
    }
    let mut table = SweepTable {
        workload: W::NAME.to_string(),
        n,
        cores_logical,
        baseline_s: summarize(&baselines),
        rows,
        amdahl: None,
    };
    table.fit();
    Ok(table)
}
