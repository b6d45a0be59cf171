//! The sweep as CSV, one line per row with every number unrounded, for spreadsheets and
//! scripts.

use std::fmt::Write;

use super::Exporter;
use crate::lab::sweep::SweepTable;

/// Comma-separated values: a header line, then one line per row; times in seconds,
/// efficiency as a fraction (1.0 = perfect), an empty field for a missing value.
pub struct Csv;

/// The header line's columns.
const HEADER: &str = "workers,chunk_size,pool_mean_s,pool_sd_s,pool_min_s,pool_max_s,runs,\
                      speedup,speedup_sd,efficiency,karp_flatt,verified";

fn field<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

impl Exporter for Csv {
    fn export(&self, table: &SweepTable) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{HEADER}");
        for row in &table.rows {
            let p = &row.pool_s;
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{}",
                row.workers,
                row.chunk_size,
                p.mean,
                p.sd,
                p.min,
                p.max,
                p.runs,
                field(row.speedup.map(|r| r.value)),
                field(row.speedup.map(|r| r.sd)),
                field(row.efficiency),
                field(row.karp_flatt),
                field(row.verified),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::sweep::sample_table;

    #[test]
    fn csv_snapshot() {
        let mut table = sample_table();
        // Round numbers, so that the expected text is readable.
        for row in &mut table.rows {
            row.speedup = row.speedup.map(|mut r| {
                r.value = (r.value * 100.0).round() / 100.0;
                r.sd = (r.sd * 100.0).round() / 100.0;
                r
            });
            row.efficiency = row.efficiency.map(|e| (e * 100.0).round() / 100.0);
            row.karp_flatt = row.karp_flatt.map(|e| (e * 100.0).round() / 100.0);
        }
        let expected = "\
workers,chunk_size,pool_mean_s,pool_sd_s,pool_min_s,pool_max_s,runs,speedup,speedup_sd,efficiency,karp_flatt,verified
1,250000,0.05,0.001,0.049,0.051,3,0.96,0.03,0.96,,true
2,125000,0.032,0.0016,0.0304,0.0336,3,1.5,0.08,0.75,0.33,true
2,250000,0.03,0.0006,0.0294,0.0306,3,1.6,0.05,0.8,0.25,true
4,250000,0.02,0.0004,0.0196,0.0204,3,2.4,0.08,0.6,0.22,
";
        assert_eq!(Csv.export(&table), expected);
    }

    #[test]
    fn csv_without_baseline_has_empty_fields() {
        let mut table = sample_table();
        table.rows.truncate(1);
        table.rows[0].speedup = None;
        table.rows[0].efficiency = None;
        table.rows[0].verified = Some(false);
        let csv = Csv.export(&table);
        assert_eq!(
            csv.lines().nth(1),
            Some("1,250000,0.05,0.001,0.049,0.051,3,,,,,false")
        );
        assert_eq!(csv.lines().count(), 2);
    }
}
