//! The sweep as a GitHub Markdown table, to paste into a README, an issue or a pull
//! request: the same columns as the terminal table, then the Amdahl fit.

use std::fmt::Write;

use super::Exporter;
use crate::lab::sweep::SweepTable;
use crate::report::sweep;

/// A line saying what was swept, a GitHub table with the columns of
/// [`render_text`](crate::report::sweep::render_text), and the Amdahl line below it.
pub struct Markdown;

impl Exporter for Markdown {
    fn export(&self, table: &SweepTable) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}; {}\n", sweep::title(table), sweep::baseline(table));
        let _ = writeln!(s, "| {} |", sweep::HEADERS.join(" | "));
        let _ = writeln!(s, "|{}", "---:|".repeat(sweep::HEADERS.len()));
        for row in &table.rows {
            let _ = writeln!(s, "| {} |", sweep::cells(row).join(" | "));
        }
        let _ = writeln!(s, "\n{}\n", sweep::KARP_FLATT_NOTE);
        let _ = writeln!(s, "{}", sweep::amdahl_line(table));
        if let Some(left) = sweep::left_out_line(table) {
            let _ = writeln!(s, "\n{}", left.trim_start());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::sweep::sample_table;

    #[test]
    fn markdown_snapshot() {
        let expected = "\
procpool sweep: squares n=1000000; 4 logical cores; 3 runs per point; baseline 48.00 ± 1.20 ms single process

| workers | chunk size | pool time | speedup | efficiency | Karp–Flatt | verified |
|---:|---:|---:|---:|---:|---:|---:|
| 1 | 250000 | 50.00 ± 1.00 ms | 0.96 ± 0.03× | 96.0 % | - | yes |
| 2 | 125000 | 32.00 ± 1.60 ms | 1.50 ± 0.08× | 75.0 % | 0.333 | yes |
| 2 | 250000 | 30.00 ± 0.60 ms | 1.60 ± 0.05× | 80.0 % | 0.250 | yes |
| 4 | 250000 | 20.00 ± 0.40 ms | 2.40 ± 0.08× | 60.0 % | 0.222 | - |

Karp–Flatt: the serial fraction each speedup implies, (1/speedup − 1/workers) / (1 − 1/workers)

Amdahl fit: serial fraction 0.225 → at most 4.5× with any number of workers (rms error 0.03)
";
        assert_eq!(Markdown.export(&sample_table()), expected);
    }
}
