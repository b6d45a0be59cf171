//! The catalogue of built-in workloads as an aligned table: what `procpool list` prints.

use std::fmt::Write;

use crate::workload::catalogue::CATALOGUE;

/// The catalogue as JSON (what `procpool list --json` prints): `schema_version`,
/// `procpool_version`, and `workloads`, one object per workload with the keys `name`,
/// `args`, `output`, `bound` and `shows`.
pub fn render_json() -> String {
    let entries: Vec<serde_json::Value> = CATALOGUE
        .iter()
        .map(|e| {
            serde_json::json!({
                "name": e.name,
                "args": e.args,
                "output": e.output,
                "bound": e.bound,
                "shows": e.shows,
            })
        })
        .collect();
    serde_json::json!({
        "schema_version": crate::lab::meta::SCHEMA_VERSION,
        "procpool_version": env!("CARGO_PKG_VERSION"),
        "workloads": entries,
    })
    .to_string()
}

/// The catalogue as an aligned text table with a header row, one line per workload.
pub fn render() -> String {
    let header = ["workload", "arguments", "output", "bound", "what it shows"];
    let rows: Vec<[&str; 5]> = std::iter::once(header)
        .chain(
            CATALOGUE
                .iter()
                .map(|e| [e.name, e.args, e.output, e.bound, e.shows]),
        )
        .collect();
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in &rows {
        let mut line = String::new();
        for (k, cell) in row.iter().enumerate() {
            if k + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[k] - cell.chars().count();
                // Writing to a `String` cannot fail.
                let _ = write!(line, "{cell}{:pad$}  ", "");
            }
        }
        table.push_str(line.trim_end());
        table.push('\n');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_aligns_every_column() {
        let table = render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), CATALOGUE.len() + 1);
        assert!(lines[0].starts_with("workload"));
        assert!(lines[0].ends_with("what it shows"));
        for (line, e) in lines[1..].iter().zip(CATALOGUE) {
            assert!(line.starts_with(e.name));
            assert!(line.ends_with(e.shows));
            assert_eq!(line.trim_end(), *line);
        }
        // Each column starts at the same character offset on every line.
        let offset = |line: &str, cell: &str| line.find(cell).map(|b| line[..b].chars().count());
        let headers = ["arguments", "output", "bound", "what it shows"];
        for (k, header) in headers.iter().enumerate() {
            let column = offset(lines[0], header).unwrap();
            for (line, e) in lines[1..].iter().zip(CATALOGUE) {
                let cell = [e.args, e.output, e.bound, e.shows][k];
                let at = line
                    .char_indices()
                    .filter(|&(b, _)| line[b..].starts_with(cell))
                    .map(|(b, _)| line[..b].chars().count())
                    .find(|&c| c == column);
                assert_eq!(at, Some(column), "`{cell}` misaligned in {line:?}");
            }
        }
    }
}
