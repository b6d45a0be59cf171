//! A run's timeline as a picture (`procpool --timeline FILE.svg`): one row per worker,
//! time across, every chunk attempt a bar (compute), the gaps between them waiting, lost
//! attempts, retries, deaths and restarts marked, and the parent's phases in a row above.
//!
//! The same data as the Chrome trace ([`super::trace`]), for a README or a report where
//! nobody will open Perfetto. SVG through plotters' SVG backend, like the sweep plot.

use std::io;
use std::path::Path;

use plotters::prelude::*;

use crate::lab::model::{Trace, TraceEventKind};
use crate::report::trace::TraceLabels;

const FONT: &str = "sans-serif";
/// Width of the picture; the height grows with the workers.
const WIDTH: u32 = 1100;
/// Width of the legend, right of the chart.
const LEGEND_PX: u32 = 300;
const ROW_PX: u32 = 40;
/// Room for the title and the axis.
const CHROME_PX: u32 = 110;
/// The least height: room for the legend.
const MIN_HEIGHT: u32 = 300;

const COMPUTE: RGBColor = RGBColor(31, 119, 180);
const RETRIED: RGBColor = RGBColor(255, 127, 14);
const LOST: RGBColor = RGBColor(214, 39, 40);
const WAITING: RGBColor = RGBColor(225, 225, 225);
const PHASE: RGBColor = RGBColor(148, 103, 189);
const RESTART: RGBColor = RGBColor(44, 160, 44);
const WINDOW: RGBColor = RGBColor(60, 60, 60);

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws `trace` as an SVG file at `path`. Errors name the path.
pub fn timeline_svg(trace: &Trace, labels: &TraceLabels, path: &Path) -> io::Result<()> {
    let svg = timeline_svg_string(trace, labels).map_err(|e| {
        io::Error::other(format!(
            "cannot draw the timeline for {}: {e}",
            path.display()
        ))
    })?;
    crate::lab::output::OutputFile::write(path, svg.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// The picture as an SVG document.
pub fn timeline_svg_string(trace: &Trace, labels: &TraceLabels) -> Result<String, String> {
    let mut svg = String::new();
    draw(trace, labels, &mut svg).map_err(|e| e.to_string())?;
    Ok(svg)
}

/// Milliseconds since `origin_ns`.
fn ms(ns: u64, origin_ns: u64) -> f64 {
    ns.saturating_sub(origin_ns) as f64 / 1e6
}

fn draw(trace: &Trace, labels: &TraceLabels, svg: &mut String) -> DrawResult {
    let workers = labels
        .workers
        .max(
            trace
                .attempts
                .iter()
                .map(|a| a.worker + 1)
                .max()
                .unwrap_or(0),
        )
        .max(1);
    // Rows from the top: the parent, then worker 0, 1, …; y grows upwards in the chart.
    let rows = workers + 1;
    let row_y = |row: usize| (rows - 1 - row) as f64;
    let worker_y = |w: usize| row_y(w + 1);
    let height = (CHROME_PX + ROW_PX * rows as u32).max(MIN_HEIGHT);
    let root = SVGBackend::with_string(svg, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let titled = root.titled(&format!("{}: timeline", labels.title), (FONT, 20))?;
    let (left, right) = titled.split_horizontally(WIDTH - LEGEND_PX);
    let (origin, end) = trace.span_ns();
    let x_hi = ms(end, origin).max(1e-3) * 1.02;
    let mut chart = ChartBuilder::on(&left)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..x_hi, -0.6f64..(rows as f64 - 0.4))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("time since the run began (ms)")
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()?;

    // Waiting: each worker's row across the job, under its chunks.
    let job = trace
        .phases
        .iter()
        .find(|p| p.name == "job")
        .map_or((trace.start_ns, trace.end_ns), |p| (p.start_ns, p.end_ns));
    let bar = |y: f64, h: f64| (y - h, y + h);
    chart.draw_series((0..workers).map(|w| {
        let (lo, hi) = bar(worker_y(w), 0.18);
        Rectangle::new(
            [(ms(job.0, origin), lo), (ms(job.1, origin), hi)],
            WAITING.filled(),
        )
    }))?;

    let attempts = |finished: bool, retried: bool| {
        trace
            .attempts
            .iter()
            .filter(move |a| a.finished == finished && (a.attempt > 0) == retried)
    };
    let rect = |a: &crate::lab::model::TraceAttempt, colour: RGBColor| {
        let (lo, hi) = bar(worker_y(a.worker), 0.32);
        Rectangle::new(
            [(ms(a.start_ns, origin), lo), (ms(a.end_ns, origin), hi)],
            colour.filled(),
        )
    };
    chart.draw_series(attempts(true, false).map(|a| rect(a, COMPUTE)))?;
    chart.draw_series(attempts(true, true).map(|a| rect(a, RETRIED)))?;
    chart.draw_series(
        attempts(false, false)
            .chain(attempts(false, true))
            .map(|a| rect(a, LOST)),
    )?;
    // Thin separators, so that neighbouring chunks read as separate bars.
    chart.draw_series(trace.attempts.iter().map(|a| {
        let (lo, hi) = bar(worker_y(a.worker), 0.32);
        let x = ms(a.start_ns, origin);
        PathElement::new([(x, lo), (x, hi)], WHITE.stroke_width(1))
    }))?;

    let at = |kind: TraceEventKind| {
        trace
            .events
            .iter()
            .filter(move |e| e.kind == kind)
            .map(move |e| {
                let y = e.worker.map_or(row_y(0), worker_y);
                (ms(e.at_ns, origin), y)
            })
    };
    chart.draw_series(
        at(TraceEventKind::Death)
            .chain(at(TraceEventKind::Timeout))
            .map(|p| Cross::new(p, 7, BLACK.stroke_width(3))),
    )?;
    chart.draw_series(
        at(TraceEventKind::Restart).map(|p| TriangleMarker::new(p, 7, RESTART.filled())),
    )?;
    let retries: Vec<(f64, f64)> = trace
        .events
        .iter()
        .filter(|e| e.kind == TraceEventKind::Retry)
        .map(|e| (ms(e.at_ns, origin), row_y(0)))
        .collect();
    chart.draw_series(retries.iter().map(|&p| Circle::new(p, 5, RETRIED.filled())))?;
    let windows: Vec<(f64, f64)> = at(TraceEventKind::WindowWritten).collect();
    if !windows.is_empty() {
        chart.draw_series(windows.iter().map(|&(x, y)| {
            PathElement::new([(x, y - 0.35), (x, y + 0.35)], WINDOW.stroke_width(1))
        }))?;
    }

    // The parent's phases, named where there is room.
    chart.draw_series(trace.phases.iter().map(|p| {
        let (lo, hi) = bar(row_y(0), 0.3);
        Rectangle::new(
            [(ms(p.start_ns, origin), lo), (ms(p.end_ns, origin), hi)],
            PHASE.mix(0.35).filled(),
        )
    }))?;
    chart.draw_series(
        trace
            .phases
            .iter()
            .filter(|p| ms(p.end_ns, p.start_ns) > x_hi * 0.08)
            .map(|p| {
                Text::new(
                    p.name.clone(),
                    (ms(p.start_ns, origin) + x_hi * 0.005, row_y(0) + 0.12),
                    (FONT, 12),
                )
            }),
    )?;

    // Row names, left of the plotting area.
    let names = std::iter::once(("parent".to_string(), row_y(0)))
        .chain((0..workers).map(|w| (format!("worker {w}"), worker_y(w))));
    for (name, y) in names {
        let (px, py) = chart.backend_coord(&(0.0, y));
        root.draw(&Text::new(
            name,
            (px - 80, py - 7),
            (FONT, 14).into_font().color(&BLACK),
        ))?;
    }

    legend(&right)?;
    root.present()?;
    Ok(())
}

/// The legend, drawn by hand right of the chart (plotters' own would cover the bars).
fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let box_at = |c: RGBColor| {
        move |(x, y): (i32, i32)| -> DynElement<'static, DB, (i32, i32)> {
            Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.filled()).into_dyn()
        }
    };
    type Glyph<DB> = Box<dyn Fn((i32, i32)) -> DynElement<'static, DB, (i32, i32)>>;
    let items: Vec<(Glyph<DB>, &str)> = vec![
        (Box::new(box_at(COMPUTE)), "compute: one bar per chunk"),
        (Box::new(box_at(RETRIED)), "compute of a retried chunk"),
        (Box::new(box_at(LOST)), "lost attempt (worker died/killed)"),
        (
            Box::new(box_at(WAITING)),
            "waiting: claiming, messages, idle",
        ),
        (
            Box::new(|(x, y)| Cross::new((x + 8, y), 6, BLACK.stroke_width(3)).into_dyn()),
            "death or timeout",
        ),
        (
            Box::new(|(x, y)| TriangleMarker::new((x + 8, y), 7, RESTART.filled()).into_dyn()),
            "replacement worker started",
        ),
        (
            Box::new(|(x, y)| Circle::new((x + 8, y), 5, RETRIED.filled()).into_dyn()),
            "chunk queued again (retry)",
        ),
        (
            Box::new(|(x, y)| {
                PathElement::new([(x + 8, y - 8), (x + 8, y + 8)], WINDOW.stroke_width(2))
                    .into_dyn()
            }),
            "output window written",
        ),
        (
            Box::new(box_at(RGBColor(208, 190, 225))),
            "parent: start, job, baseline, verify",
        ),
    ];
    for (i, (glyph, text)) in items.iter().enumerate() {
        let y = 40 + 24 * i as i32;
        area.draw(&glyph((10, y)))?;
        area.draw(&Text::new(
            *text,
            (34, y - 7),
            (FONT, 13).into_font().color(&BLACK),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::model::{TraceAttempt, TraceEvent, TracePhase};

    #[test]
    fn a_timeline_has_a_row_per_worker_and_a_legend() {
        let attempt = |chunk, worker, start_ns, end_ns, finished| TraceAttempt {
            chunk,
            range: 0..10,
            worker,
            attempt: u32::from(chunk == 3),
            start_ns,
            end_ns,
            finished,
            compute_ns: None,
        };
        let trace = Trace {
            start_ns: 0,
            end_ns: 10_000_000,
            attempts: vec![
                attempt(0, 0, 1_000_000, 4_000_000, true),
                attempt(1, 1, 1_000_000, 3_000_000, false),
                attempt(3, 2, 5_000_000, 9_000_000, true),
            ],
            phases: vec![TracePhase {
                name: "job".into(),
                start_ns: 0,
                end_ns: 10_000_000,
            }],
            events: vec![TraceEvent {
                at_ns: 3_000_000,
                kind: TraceEventKind::Death,
                worker: Some(1),
                chunk: Some(1),
                detail: String::new(),
            }],
        };
        let labels = TraceLabels {
            title: "procpool test".into(),
            workers: 3,
        };
        let svg = timeline_svg_string(&trace, &labels).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let texts: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::trim).map(str::to_string))
            .collect();
        for want in [
            "parent",
            "worker 0",
            "worker 1",
            "worker 2",
            "death or timeout",
        ] {
            assert!(texts.iter().any(|t| t == want), "{want} in {texts:?}");
        }
        assert!(!texts.iter().any(|t| t == "worker 3"));
    }
}
