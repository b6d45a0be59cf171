//! The result of `procpool sweep`: one row per (workers, chunk size) point, the Amdahl fit
//! over them, and the aligned text table a person reads in the terminal.
//!
//! It exists apart from [`Report`](super::Report) because a sweep is many runs of one job:
//! its numbers are summaries over repeated runs (mean ± sd) rather than single timings, and
//! its exporters ([`export`](super::export)) and chart ([`plot`](super::plot)) all read it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::measure::{self, AmdahlFit, Ratio, Summary};

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
        }
    }
}

/// Every point of a sweep of one workload, and Amdahl's law fitted to them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepTable {
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
}

impl SweepTable {
    /// Fits Amdahl's law to the rows' mean speedups (using, for each worker count, the best
    /// (highest-speedup) chunk size row) and stores it in `amdahl`.
    ///
    /// `amdahl` becomes `None` when fewer than 2 worker counts have a speedup.
    pub fn fit(&mut self) {
        let mut best: BTreeMap<usize, f64> = BTreeMap::new();
        for row in &self.rows {
            if let Some(s) = row.speedup {
                let entry = best.entry(row.workers).or_insert(s.value);
                if s.value > *entry {
                    *entry = s.value;
                }
            }
        }
        let points: Vec<(usize, f64)> = best.into_iter().collect();
        self.amdahl = measure::fit_amdahl(&points);
    }
}

/// Column headers of the table, shared by the text and Markdown forms.
pub(crate) const HEADERS: [&str; 7] = [
    "workers",
    "chunk size",
    "pool time",
    "speedup",
    "efficiency",
    "Karp–Flatt",
    "verified",
];

/// One row's cells, in the order of [`HEADERS`]; `-` for a missing value.
pub(crate) fn cells(row: &SweepRow) -> [String; 7] {
    let dash = || "-".to_string();
    [
        row.workers.to_string(),
        row.chunk_size.to_string(),
        time(&row.pool_s),
        row.speedup.map(times).unwrap_or_else(dash),
        row.efficiency
            .map(|e| format!("{:.1} %", e * 100.0))
            .unwrap_or_else(dash),
        row.karp_flatt
            .map(|e| format!("{e:.3}"))
            .unwrap_or_else(dash),
        match row.verified {
            Some(true) => "yes".to_string(),
            Some(false) => "NO".to_string(),
            None => dash(),
        },
    ]
}

/// What the table is about: workload, size, cores and runs per point.
pub(crate) fn title(table: &SweepTable) -> String {
    let mut runs: Vec<usize> = table.rows.iter().map(|r| r.pool_s.runs).collect();
    runs.sort_unstable();
    runs.dedup();
    let runs = match runs.as_slice() {
        [] => String::new(),
        [1] => "; 1 run per point".to_string(),
        [r] => format!("; {r} runs per point"),
        [lo, .., hi] => format!("; {lo} to {hi} runs per point"),
    };
    format!(
        "procpool sweep: {} n={}; {}{runs}",
        table.workload,
        table.n,
        crate::units::count(table.cores_logical, "logical core")
    )
}

/// The baseline's timing, or why there is none.
pub(crate) fn baseline(table: &SweepTable) -> String {
    match &table.baseline_s {
        Some(b) => format!("baseline {} single process", time(b)),
        None => "baseline skipped: no speedups".to_string(),
    }
}

/// What the Karp–Flatt column means.
pub(crate) const KARP_FLATT_NOTE: &str = "Karp–Flatt: the serial fraction each speedup implies, \
     (1/speedup − 1/workers) / (1 − 1/workers)";

/// The Amdahl line under the table.
pub(crate) fn amdahl_line(table: &SweepTable) -> String {
    match &table.amdahl {
        Some(fit) => {
            let limit = match fit.ceiling {
                Some(c) => format!("at most {c:.1}× with any number of workers"),
                None => "no limit: the speedup grows with every worker".to_string(),
            };
            format!(
                "Amdahl fit: serial fraction {:.3} → {limit} (rms error {:.2})",
                fit.serial_fraction, fit.rmse
            )
        }
        None if table.rows.iter().all(|r| r.speedup.is_none()) => {
            "Amdahl fit: no speedups to fit (no baseline)".to_string()
        }
        None => "Amdahl fit: not enough worker counts to fit Amdahl's law".to_string(),
    }
}

/// A timing summary in seconds as `mean ± sd unit` (just `mean unit` for one run).
pub(crate) fn time(s: &Summary) -> String {
    crate::units::seconds_spread(s.mean, s.sd, s.runs)
}

/// A speedup as `value ± sd×` (just `value×` when the sd is 0).
pub(crate) fn times(r: Ratio) -> String {
    if r.sd == 0.0 {
        format!("{:.2}×", r.value)
    } else {
        format!("{:.2} ± {:.2}×", r.value, r.sd)
    }
}

/// Renders the sweep for a terminal: a title, the baseline, an aligned table (workers,
/// chunk size, pool time mean ± sd, speedup ± sd, efficiency, Karp–Flatt serial fraction,
/// verified; `-` for a missing value), then the Amdahl fit.
///
/// Call [`SweepTable::fit`] first, or the last line says there is no fit.
pub fn render_text(table: &SweepTable) -> String {
    let rows: Vec<[String; 7]> = table.rows.iter().map(cells).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 7]| -> String {
        let mut s = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(s, "  {cell:>w$}");
        }
        s
    };

    let mut s = String::new();
    let _ = writeln!(s, "{}", title(table));
    let _ = writeln!(s, "  {}", baseline(table));
    let _ = writeln!(s, "{}", line(&HEADERS.map(String::from)));
    for row in &rows {
        let _ = writeln!(s, "{}", line(row));
    }
    let _ = writeln!(s, "  {KARP_FLATT_NOTE}");
    let _ = writeln!(s, "{}", amdahl_line(table));
    s
}

/// A small table shared by the tests of the sweep and its exporters.
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
    fn fit_without_baseline_is_none() {
        let mut t = sample_table();
        t.baseline_s = None;
        for row in &mut t.rows {
            *row = SweepRow::measured(row.workers, row.chunk_size, row.pool_s, None, None);
        }
        t.fit();
        assert_eq!(t.amdahl, None);
        assert!(render_text(&t).ends_with("Amdahl fit: no speedups to fit (no baseline)\n"));
    }

    #[test]
    fn render_text_snapshot() {
        let expected = "\
procpool sweep: squares n=1000000; 4 logical cores; 3 runs per point
  baseline 48.00 ± 1.20 ms single process
  workers  chunk size        pool time       speedup  efficiency  Karp–Flatt  verified
        1      250000  50.00 ± 1.00 ms  0.96 ± 0.03×      96.0 %           -       yes
        2      125000  32.00 ± 1.60 ms  1.50 ± 0.08×      75.0 %       0.333       yes
        2      250000  30.00 ± 0.60 ms  1.60 ± 0.05×      80.0 %       0.250       yes
        4      250000  20.00 ± 0.40 ms  2.40 ± 0.08×      60.0 %       0.222         -
  Karp–Flatt: the serial fraction each speedup implies, (1/speedup − 1/workers) / (1 − 1/workers)
Amdahl fit: serial fraction 0.225 → at most 4.5× with any number of workers (rms error 0.03)
";
        assert_eq!(render_text(&sample_table()), expected);
    }

    #[test]
    fn render_text_single_runs_and_too_few_worker_counts() {
        let one = Summary {
            mean: 2.5,
            sd: 0.0,
            min: 2.5,
            max: 2.5,
            runs: 1,
        };
        let five = Summary {
            mean: 5.0,
            min: 5.0,
            max: 5.0,
            ..one
        };
        let mut t = SweepTable {
            workload: "primes".into(),
            n: 10,
            cores_logical: 2,
            baseline_s: Some(five),
            rows: vec![SweepRow::measured(2, 5, one, Some(&five), Some(false))],
            amdahl: None,
        };
        t.fit();
        let expected = "\
procpool sweep: primes n=10; 2 logical cores; 1 run per point
  baseline 5.000 s single process
  workers  chunk size  pool time  speedup  efficiency  Karp–Flatt  verified
        2           5    2.500 s    2.00×     100.0 %       0.000        NO
  Karp–Flatt: the serial fraction each speedup implies, (1/speedup − 1/workers) / (1 − 1/workers)
Amdahl fit: not enough worker counts to fit Amdahl's law
";
        assert_eq!(render_text(&t), expected);
    }

    #[test]
    fn amdahl_line_without_ceiling() {
        let mut t = sample_table();
        t.amdahl = Some(AmdahlFit {
            serial_fraction: 0.0,
            ceiling: None,
            rmse: 0.01,
            points: 3,
        });
        assert_eq!(
            amdahl_line(&t),
            "Amdahl fit: serial fraction 0.000 → no limit: the speedup grows with every worker (rms error 0.01)"
        );
    }

    #[test]
    fn time_picks_a_unit() {
        let s = |mean, sd, runs| Summary {
            mean,
            sd,
            min: mean,
            max: mean,
            runs,
        };
        assert_eq!(time(&s(1.5, 0.25, 2)), "1.500 ± 0.250 s");
        assert_eq!(time(&s(0.0123, 0.0004, 2)), "12.30 ± 0.40 ms");
        assert_eq!(time(&s(0.000_012_3, 0.0, 1)), "12.3 µs");
    }
}
