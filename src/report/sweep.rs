//! The sweep's table as a person reads it in the terminal: a title, the baseline, aligned
//! rows and the Amdahl fit. The rows themselves are [`crate::lab::SweepTable`]; the
//! exporters ([`export`](super::export)) and the chart (`plot`) read the same table.

use std::fmt::Write;

use crate::lab::measure::{Ratio, Summary};
use crate::lab::sweep::{SweepRow, SweepTable};

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

/// Which worker counts the Amdahl fit left out and why (`None` when it used them all).
pub(crate) fn left_out_line(table: &SweepTable) -> Option<String> {
    let left: Vec<String> = table
        .oversubscribed_workers
        .iter()
        .map(usize::to_string)
        .collect();
    let workers = match left.as_slice() {
        [] => return None,
        [one] => format!("{one} workers"),
        [init @ .., last] => format!("{} and {last} workers", init.join(", ")),
    };
    Some(format!(
        "  left out of the fit: {workers}, more than the {} (they share cores, which \
         Amdahl's law does not model)",
        crate::units::count(table.cores_logical, "logical core")
    ))
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
/// verified; `-` for a missing value), then the Amdahl fit and the worker counts it left
/// out.
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
    if let Some(left) = left_out_line(table) {
        let _ = writeln!(s, "{left}");
    }
    s
}

/// A small table shared by the tests of the sweep and its exporters.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::measure::AmdahlFit;
    use crate::lab::sweep::sample_table;

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
            meta: crate::lab::Meta::sample(),
            workload: "primes".into(),
            n: 10,
            cores_logical: 2,
            baseline_s: Some(five),
            rows: vec![SweepRow::measured(2, 5, one, Some(&five), Some(false))],
            amdahl: None,
            oversubscribed_workers: Vec::new(),
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
    fn left_out_worker_counts_are_named() {
        let mut t = sample_table();
        t.cores_logical = 2;
        t.fit();
        assert_eq!(t.oversubscribed_workers, [4]);
        assert!(render_text(&t).ends_with(
            "\n  left out of the fit: 4 workers, more than the 2 logical cores (they share \
             cores, which Amdahl's law does not model)\n"
        ));
        t.cores_logical = 1;
        t.fit();
        assert_eq!(
            left_out_line(&t).unwrap(),
            "  left out of the fit: 2 and 4 workers, more than the 1 logical core (they share \
             cores, which Amdahl's law does not model)"
        );
        assert_eq!(left_out_line(&sample_table()), None);
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
