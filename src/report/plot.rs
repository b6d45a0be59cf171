//! The sweep as a picture: speedup against workers, next to the ideal and Amdahl's law,
//! with the parallel efficiency below, in one SVG file (`procpool sweep --plot FILE.svg`).
//!
//! It exists because a scaling curve is read at a glance where a table is not: where the
//! measured points leave the ideal line, and which ceiling they bend towards. SVG only,
//! through plotters' SVG backend, which writes text as `<text>` elements, so no font is
//! needed to draw it.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::lab::measure::amdahl_speedup;
use crate::lab::output::OutputFile;
use crate::lab::sweep::{SweepRow, SweepTable};

/// Width and height of the picture, in pixels.
const SIZE: (u32, u32) = (900, 820);
/// Height of the speedup chart; the efficiency chart takes the rest.
const SPEEDUP_HEIGHT: u32 = 500;
const FONT: &str = "sans-serif";
/// The reference lines: ideal speedup, 100 % efficiency.
const GREY: RGBColor = RGBColor(110, 110, 110);

/// The colour of the `i`-th chunk size (Tableau 10: distinct, and readable on white).
fn colour(i: usize) -> RGBColor {
    const TABLEAU: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    TABLEAU[i % TABLEAU.len()]
}

/// Draws the sweep as an SVG file at `path`: speedup against workers (one line with points
/// and ± sd bars per chunk size, the ideal `speedup = workers` dashed, the fitted Amdahl
/// curve if [`SweepTable::fit`] found one, the machine's logical cores marked), and below
/// it the parallel efficiency in % with the same colours.
///
/// Errors name the path.
pub fn plot_speedup_svg(table: &SweepTable, path: &Path) -> io::Result<()> {
    let svg = speedup_svg_string(table).map_err(|e| {
        io::Error::other(format!(
            "cannot draw the sweep chart for {}: {e}",
            path.display()
        ))
    })?;
    OutputFile::write(path, svg.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// The sweep chart of [`plot_speedup_svg`] as an SVG document.
pub fn speedup_svg_string(table: &SweepTable) -> Result<String, String> {
    let mut svg = String::new();
    draw(table, &mut svg).map_err(|e| e.to_string())?;
    Ok(svg)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// The rows with a speedup, grouped by chunk size, each group sorted by workers.
fn series(table: &SweepTable) -> BTreeMap<u64, Vec<&SweepRow>> {
    let mut by_chunk: BTreeMap<u64, Vec<&SweepRow>> = BTreeMap::new();
    for row in table.rows.iter().filter(|r| r.speedup.is_some()) {
        by_chunk.entry(row.chunk_size).or_default().push(row);
    }
    for rows in by_chunk.values_mut() {
        rows.sort_by_key(|r| r.workers);
    }
    by_chunk
}

fn draw(table: &SweepTable, svg: &mut String) -> DrawResult {
    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "procpool sweep: {} n={} ({})",
        table.workload,
        table.n,
        crate::units::count(table.cores_logical, "logical core")
    );
    let area = root.titled(&title, (FONT, 24))?;
    let (top, bottom) = area.split_vertically(SPEEDUP_HEIGHT);

    let series = series(table);
    let max_workers = table
        .rows
        .iter()
        .map(|r| r.workers)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x_hi = max_workers + (0.05 * max_workers).max(0.5);
    let x_range = 0f64..x_hi;

    draw_speedup(table, &series, &top, x_range.clone())?;
    draw_efficiency(&series, &bottom, x_range)?;
    root.present()?;
    Ok(())
}

/// How many ticks the workers axis gets: about one per worker, at most 12, so that
/// plotters picks whole-number steps.
fn x_labels(x_hi: f64) -> usize {
    (x_hi.floor() as usize + 1).clamp(2, 12)
}

/// Tick labels for worker counts: whole numbers without a fraction.
fn workers_label(x: &f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn draw_speedup(
    table: &SweepTable,
    series: &BTreeMap<u64, Vec<&SweepRow>>,
    area: &DrawingArea<SVGBackend, Shift>,
    x_range: std::ops::Range<f64>,
) -> DrawResult {
    let x_hi = x_range.end;
    let measured_top = series
        .values()
        .flatten()
        .filter_map(|r| r.speedup.map(|s| s.value + s.sd))
        .fold(0.0, f64::max);
    let amdahl_top = table
        .amdahl
        .map(|fit| amdahl_speedup(fit.serial_fraction, x_hi))
        .unwrap_or(0.0);
    let cores = table.cores_logical.max(1) as f64;
    // Room for what was measured and for the ideal up to the cores the machine has: an
    // ideal line far above every point would squash them against the axis.
    let y_hi = measured_top.max(amdahl_top).max(cores.min(x_hi)).max(1.0) * 1.15;

    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .caption("speedup = baseline / pool (mean ± sd)", (FONT, 18))
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range, 0f64..y_hi)?;
    chart
        .configure_mesh()
        .x_desc("worker processes")
        .y_desc("speedup (×)")
        .x_labels(x_labels(x_hi))
        .x_label_formatter(&workers_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;

    // The ideal, y = x, up to where it leaves the chart.
    let ideal_end = x_hi.min(y_hi);
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (ideal_end, ideal_end)],
            8,
            6,
            GREY.stroke_width(2),
        ))?
        .label("ideal: speedup = workers")
        .legend(|(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new([(0, 0), (8, 0)], GREY.stroke_width(2))
                + PathElement::new([(12, 0), (20, 0)], GREY.stroke_width(2))
        });

    if cores < x_hi {
        let cores_color = RGBColor(120, 170, 230);
        chart
            .draw_series(LineSeries::new(
                [(cores, 0.0), (cores, y_hi)],
                cores_color.stroke_width(2),
            ))?
            .label(format!(
                "{} logical cores: more workers take turns on them",
                table.cores_logical
            ))
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], cores_color.stroke_width(2))
            });
    }

    if let Some(fit) = table.amdahl {
        const STEPS: usize = 200;
        let curve = (0..=STEPS).map(|i| {
            let x = 1.0 + (x_hi - 1.0).max(0.0) * i as f64 / STEPS as f64;
            (x, amdahl_speedup(fit.serial_fraction, x))
        });
        let label = match fit.ceiling {
            Some(c) => format!(
                "Amdahl fit: serial fraction {:.3}, at most {c:.1}×",
                fit.serial_fraction
            ),
            None => "Amdahl fit: serial fraction 0, no limit".to_string(),
        };
        chart
            .draw_series(LineSeries::new(curve, BLACK.stroke_width(1)))?
            .label(label)
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(1)));
    }

    for (i, (chunk, rows)) in series.iter().enumerate() {
        let color = colour(i);
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| r.speedup.map(|s| (r.workers as f64, s.value)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(format!("chunk size {chunk}"))
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new([(0, 0), (20, 0)], color.stroke_width(2))
                    + Circle::new((10, 0), 4, color.filled())
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        chart.draw_series(rows.iter().filter_map(|r| {
            let s = r.speedup?;
            (s.sd > 0.0).then(|| {
                let x = r.workers as f64;
                PathElement::new(
                    [(x, s.value - s.sd), (x, s.value + s.sd)],
                    color.stroke_width(1),
                )
            })
        }))?;
    }

    if series.is_empty() {
        area.draw(&Text::new(
            "no baseline: no speedups to plot",
            (360, 150),
            (FONT, 18).into_font().color(&RED),
        ))?;
    }

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn draw_efficiency(
    series: &BTreeMap<u64, Vec<&SweepRow>>,
    area: &DrawingArea<SVGBackend, Shift>,
    x_range: std::ops::Range<f64>,
) -> DrawResult {
    let percent = |r: &SweepRow| r.efficiency.map(|e| (r.workers as f64, e * 100.0));
    let top = series
        .values()
        .flatten()
        .filter_map(|r| percent(r))
        .map(|(_, e)| e)
        .fold(100.0, f64::max);
    let x_hi = x_range.end;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .caption(
            "parallel efficiency = speedup / workers (100 % is perfect scaling)",
            (FONT, 18),
        )
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range, 0f64..top * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("worker processes")
        .y_desc("efficiency (%)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_labels(x_labels(x_hi))
        .x_label_formatter(&workers_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        [(0.0, 100.0), (x_hi, 100.0)],
        8,
        6,
        GREY.stroke_width(2),
    ))?;
    for (i, rows) in series.values().enumerate() {
        let color = colour(i);
        let points: Vec<(f64, f64)> = rows.iter().filter_map(|r| percent(r)).collect();
        chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::sweep::sample_table;

    /// Parses the SVG and returns its text contents and the names of its elements.
    fn parse(svg: &str) -> (Vec<String>, Vec<String>) {
        let doc = roxmltree::Document::parse(svg).expect("well-formed XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(|t| t.trim().to_string()))
            .collect();
        let names = doc
            .descendants()
            .filter(|n| n.is_element())
            .map(|n| n.tag_name().name().to_string())
            .collect();
        (texts, names)
    }

    #[test]
    fn plot_writes_a_well_formed_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.svg");
        plot_speedup_svg(&sample_table(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let body = svg.trim_start();
        let body = match body.strip_prefix("<?xml") {
            Some(rest) => rest[rest.find("?>").unwrap() + 2..].trim_start(),
            None => body,
        };
        assert!(body.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.trim_end().ends_with("</svg>"));

        let (texts, names) = parse(&svg);
        for expected in [
            "procpool sweep: squares n=1000000 (4 logical cores)",
            "worker processes",
            "speedup (×)",
            "efficiency (%)",
            "ideal: speedup = workers",
            "chunk size 125000",
            "chunk size 250000",
            "Amdahl fit: serial fraction 0.225, at most 4.5×",
        ] {
            assert!(
                texts.iter().any(|t| t == expected),
                "no `{expected}` in {texts:?}"
            );
        }
        let lines = names
            .iter()
            .filter(|n| *n == "polyline" || *n == "path")
            .count();
        assert!(lines >= 4, "{names:?}");
        assert!(
            names.iter().filter(|n| *n == "circle").count() >= 8,
            "{names:?}"
        );
    }

    #[test]
    fn plot_without_baseline_says_so() {
        let mut table = sample_table();
        table.baseline_s = None;
        for row in &mut table.rows {
            *row = SweepRow::measured(row.workers, row.chunk_size, row.pool_s, None, None);
        }
        table.fit();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.svg");
        plot_speedup_svg(&table, &path).unwrap();
        let (texts, _) = parse(&std::fs::read_to_string(&path).unwrap());
        assert!(
            texts
                .iter()
                .any(|t| t == "no baseline: no speedups to plot"),
            "{texts:?}"
        );
    }

    #[test]
    fn plot_of_an_empty_table_is_still_a_picture() {
        let mut table = sample_table();
        table.rows.clear();
        table.fit();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.svg");
        plot_speedup_svg(&table, &path).unwrap();
        parse(&std::fs::read_to_string(&path).unwrap());
    }

    #[test]
    fn plot_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("sweep.svg");
        let err = plot_speedup_svg(&sample_table(), &path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
