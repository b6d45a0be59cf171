//! `procpool sweep`: the same job over a grid of worker counts and chunk sizes, one row
//! per (workers, chunk size) point, and Amdahl's law fitted to them.
//!
//! Each point is a full measured run ([`crate::run()`]) with its own interleaved baseline
//! rounds, so every point is verified and its speedup compares like with like. The
//! [`SweepTable`] exists apart from [`crate::Report`] because a sweep is many runs of one
//! job: its numbers are summaries over repeated runs (mean ± sd) rather than single
//! timings. [`crate::report::sweep`] renders it, and the exporters and the plot read it.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

use serde::Serialize;

use crate::engine::schedule::Dispenser;
use crate::lab::measure::{self, AmdahlFit, Ratio, Summary, summarize};
use crate::lab::meta::Meta;
use crate::lab::model::Report;
use crate::lab::run::{RunOptions, run};
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
        return Err(Error::invalid(
            "workers",
            "a sweep needs at least one worker count in `workers` (e.g. 1,2,4)",
        ));
    }
    let chunk_sizes = if options.chunk_sizes.is_empty() {
        let most = options.workers.iter().copied().max().unwrap_or(1);
        let dispenser = Dispenser::new(options.run.job.schedule, n, most, None);
        vec![Some(dispenser.chunk_size())]
    } else {
        options.chunk_sizes.clone()
    };
    let mut rows = Vec::new();
    let mut baselines = Vec::new();
    let mut cores_logical = 0;
    let mut meta = None;
    for &workers in &options.workers {
        for &chunk_size in &chunk_sizes {
            let mut run_options = options.run.clone();
            run_options.pool.workers = workers;
            run_options.job.chunk_size = chunk_size;
            let report = run(workload, n, &run_options)?;
            each(&report);
            meta.get_or_insert_with(|| report.meta.clone());
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
        // The first run's: when the sweep started, and the machine it ran on.
        meta: meta.unwrap_or_else(|| {
            Meta::new(std::time::SystemTime::now(), &crate::lab::Machine::read())
        }),
        workload: W::NAME.to_string(),
        n,
        cores_logical,
        baseline_s: summarize(&baselines),
        rows,
        amdahl: None,
        oversubscribed_workers: Vec::new(),
    };
    table.fit();
    Ok(table)
}

/// One point of a sweep: a worker count and chunk size, timed over several runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepRow {
    /// Worker processes.
    pub workers: usize,
    /// Elements per chunk.
    pub chunk_size: u64,
    /// Wall time of the pool run, in seconds, over the repeated runs.
    pub pool_s: Summary,
    /// Baseline mean / pool mean, with its propagated sd (`None` without a baseline).
    pub speedup: Option<Ratio>,
    /// `speedup / workers` (`None` without a baseline).
    pub efficiency: Option<f64>,
    /// The Karp–Flatt serial fraction the speedup implies (`None` for 1 worker or without
    /// a baseline).
    pub karp_flatt: Option<f64>,
    /// True when every run's output equalled the single-process output (`None` when not
    /// checked).
    pub verified: Option<bool>,
    /// True when the Amdahl fit used this row: it has a speedup, it is the best chunk size
    /// of its worker count, and its workers do not outnumber the cores (an oversubscribed
    /// point shares cores, which Amdahl's law does not model). Set by [`SweepTable::fit`].
    pub fitted: bool,
}

impl SweepRow {
    /// A row whose speedup, efficiency and Karp–Flatt fraction are computed from the pool
    /// timings and the `baseline_s` timings (all `None` when there is no baseline).
    pub fn measured(
        workers: usize,
        chunk_size: u64,
        pool_s: Summary,
        baseline_s: Option<&Summary>,
        verified: Option<bool>,
    ) -> SweepRow {
        let speedup = baseline_s.map(|b| measure::ratio(b, &pool_s));
        SweepRow {
            workers,
            chunk_size,
            pool_s,
            speedup,
            efficiency: speedup.map(|s| measure::efficiency(s.value, workers)),
            karp_flatt: speedup.and_then(|s| measure::karp_flatt(s.value, workers)),
            verified,
            fitted: false,
        }
    }
}

/// Every point of a sweep of one workload, and Amdahl's law fitted to them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepTable {
    /// The schema and procpool versions, the start time and the machine (flattened).
    #[serde(flatten)]
    pub meta: Meta,
    /// Workload name.
    pub workload: String,
    /// Number of elements computed per run.
    pub n: u64,
    /// Logical CPUs this process may use.
    pub cores_logical: usize,
    /// Wall time of the single-process run, in seconds (`None` without a baseline).
    pub baseline_s: Option<Summary>,
    /// One row per (workers, chunk size) point, in the order they ran.
    pub rows: Vec<SweepRow>,
    /// Amdahl's law fitted to the speedups (see [`SweepTable::fit`]).
    pub amdahl: Option<AmdahlFit>,
    /// Worker counts left out of the fit because they outnumber `cores_logical`, in
    /// increasing order (empty when none were).
    pub oversubscribed_workers: Vec<usize>,
}

impl SweepTable {
    /// Fits Amdahl's law to the rows' mean speedups (using, for each worker count, the best
    /// (highest-speedup) chunk size row) and stores it in `amdahl`, marking the rows it used
    /// `fitted`.
    ///
    /// Worker counts above `cores_logical` are left out (and listed in
    /// `oversubscribed_workers`): on 2 cores, 3 and 4 workers cannot go faster than 2, and
    /// fitting them as if they had 3 and 4 cores reads the sharing as a serial fraction.
    /// With `cores_logical` 0 (unknown) every point is used. `amdahl` becomes `None` when
    /// fewer than 2 worker counts remain.
    pub fn fit(&mut self) {
        let cores = self.cores_logical;
        let fits = |workers: usize| cores == 0 || workers <= cores;
        let mut best: BTreeMap<usize, (usize, f64)> = BTreeMap::new();
        for (i, row) in self.rows.iter().enumerate() {
            if let Some(s) = row.speedup {
                let entry = best.entry(row.workers).or_insert((i, s.value));
                if s.value > entry.1 {
                    *entry = (i, s.value);
                }
            }
        }
        self.oversubscribed_workers = best.keys().copied().filter(|&w| !fits(w)).collect();
        best.retain(|&w, _| fits(w));
        let points: Vec<(usize, f64)> = best.iter().map(|(&w, &(_, s))| (w, s)).collect();
        self.amdahl = measure::fit_amdahl(&points);
        for row in &mut self.rows {
            row.fitted = false;
        }
        if self.amdahl.is_some() {
            for &(i, _) in best.values() {
                self.rows[i].fitted = true;
            }
        }
    }
}

#[cfg(test)]
pub(crate) fn sample_table() -> SweepTable {
    let summary = |mean: f64, sd: f64, min: f64, max: f64| Summary {
        mean,
        sd,
        min,
        max,
        runs: 3,
    };
    let baseline = summary(0.048, 0.0012, 0.0468, 0.0492);
    let mut table = SweepTable {
        meta: Meta::sample(),
        workload: "squares".into(),
        n: 1_000_000,
        cores_logical: 4,
        baseline_s: Some(baseline),
        rows: vec![
            SweepRow::measured(
                1,
                250_000,
                summary(0.05, 0.001, 0.049, 0.051),
                Some(&baseline),
                Some(true),
            ),
            SweepRow::measured(
                2,
                125_000,
                summary(0.032, 0.0016, 0.0304, 0.0336),
                Some(&baseline),
                Some(true),
            ),
            SweepRow::measured(
                2,
                250_000,
                summary(0.03, 0.0006, 0.0294, 0.0306),
                Some(&baseline),
                Some(true),
            ),
            SweepRow::measured(
                4,
                250_000,
                summary(0.02, 0.0004, 0.0196, 0.0204),
                Some(&baseline),
                None,
            ),
        ],
        amdahl: None,
        oversubscribed_workers: Vec::new(),
    };
    table.fit();
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_row_computes_the_derived_columns() {
        let t = sample_table();
        let row = &t.rows[3];
        let speedup = row.speedup.unwrap();
        assert!((speedup.value - 2.4).abs() < 1e-12);
        // sqrt(0.025² + 0.02²) relative, times 2.4.
        assert!((speedup.sd - 2.4 * (0.025f64.powi(2) + 0.02f64.powi(2)).sqrt()).abs() < 1e-12);
        assert!((row.efficiency.unwrap() - 0.6).abs() < 1e-12);
        // (1/2.4 - 1/4) / (3/4) = 2/9.
        assert!((row.karp_flatt.unwrap() - 2.0 / 9.0).abs() < 1e-12);
        assert_eq!(t.rows[0].karp_flatt, None);
    }

    #[test]
    fn fit_uses_the_best_chunk_size_per_worker_count() {
        let t = sample_table();
        let fit = t.amdahl.unwrap();
        assert_eq!(fit.points, 3);
        let expected =
            measure::fit_amdahl(&[(1, 0.048 / 0.05), (2, 0.048 / 0.03), (4, 0.048 / 0.02)])
                .unwrap();
        assert_eq!(fit, expected);
    }

    #[test]
    fn fit_leaves_out_worker_counts_above_the_cores() {
        // 2 cores, a job with a 5 % serial fraction: 1 and 2 workers follow Amdahl's law,
        // 3 and 4 only share the 2 cores (the speedup of 2 workers, a little worse).
        let baseline = Summary {
            mean: 1.0,
            sd: 0.0,
            min: 1.0,
            max: 1.0,
            runs: 1,
        };
        let row = |workers: usize, speedup: f64| {
            let pool = Summary {
                mean: 1.0 / speedup,
                min: 1.0 / speedup,
                max: 1.0 / speedup,
                ..baseline
            };
            SweepRow::measured(workers, 1000, pool, Some(&baseline), Some(true))
        };
        let s2 = measure::amdahl_speedup(0.05, 2.0);
        let mut table = SweepTable {
            cores_logical: 2,
            rows: vec![
                row(1, 1.0),
                row(2, s2),
                row(3, s2 * 0.97),
                row(4, s2 * 0.95),
            ],
            amdahl: None,
            oversubscribed_workers: Vec::new(),
            ..sample_table()
        };
        table.fit();
        let fit = table.amdahl.unwrap();
        assert_eq!(fit.points, 2);
        assert!((fit.serial_fraction - 0.05).abs() < 1e-6, "{fit:?}");
        assert_eq!(table.oversubscribed_workers, [3, 4]);
        let fitted: Vec<bool> = table.rows.iter().map(|r| r.fitted).collect();
        assert_eq!(fitted, [true, true, false, false]);

        // Fitted as if 3 and 4 workers had their own cores, the same points read as a
        // large serial fraction: the mistake this avoids.
        let all: Vec<(usize, f64)> = table
            .rows
            .iter()
            .map(|r| (r.workers, r.speedup.unwrap().value))
            .collect();
        assert!(measure::fit_amdahl(&all).unwrap().serial_fraction > 0.2);

        // Unknown cores: every point is fitted.
        table.cores_logical = 0;
        table.fit();
        assert_eq!(table.amdahl.unwrap().points, 4);
        assert!(table.oversubscribed_workers.is_empty());
        assert!(table.rows.iter().all(|r| r.fitted));
    }
}
