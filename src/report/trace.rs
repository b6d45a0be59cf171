//! A run's timeline in the Chrome trace event format (`procpool --trace FILE.json`), which
//! Perfetto (<https://ui.perfetto.dev>) and `chrome://tracing` open: one track per worker
//! with every chunk attempt as a slice, the parent's phases on a track of its own, and
//! deaths, restarts, retries, timeouts and window writes as instant events.
//!
//! It exists because imbalance, a slow start, a straggler or a retry storm is obvious in a
//! picture of chunks over time and invisible in a table of totals.

use serde_json::{Value, json};

use crate::lab::model::{Trace, TraceEventKind};

/// The trace's process id: one process, procpool, holding every track.
const PID: u64 = 1;
/// The parent's track; worker `w` is track `w + 1`.
const PARENT_TID: u64 = 0;

/// What the tracks are called: the run's title ("procpool squares n=1000000") and how many
/// workers it had (a track each, even a worker that ran nothing).
#[derive(Debug, Clone)]
pub struct TraceLabels {
    /// The process's name in the viewer.
    pub title: String,
    /// Workers in the run.
    pub workers: usize,
}

/// Microseconds from `origin_ns` to `ns`, the unit of `ts` and `dur`.
fn us(ns: u64, origin_ns: u64) -> f64 {
    ns.saturating_sub(origin_ns) as f64 / 1e3
}

/// The trace as a Chrome trace JSON object (`{"traceEvents": [...], ...}`). Times start at
/// 0 at the first thing the trace holds. A worker's slices never overlap: on the channel
/// path a chunk's start is estimated from its `Done` (see [`Trace`]), and one that would
/// start before the previous slice of its track ended starts at that end instead (its
/// `compute_ms` argument keeps the kernel time).
pub fn chrome_trace(trace: &Trace, labels: &TraceLabels) -> Value {
    let (origin, _) = trace.span_ns();
    let mut events = Vec::new();
    let meta = |name: &str, tid: u64, args: Value| json!({"name": name, "ph": "M", "pid": PID, "tid": tid, "args": args});
    events.push(meta(
        "process_name",
        PARENT_TID,
        json!({"name": labels.title}),
    ));
    events.push(meta("thread_name", PARENT_TID, json!({"name": "parent"})));
    events.push(meta(
        "thread_sort_index",
        PARENT_TID,
        json!({"sort_index": 0}),
    ));
    let workers = labels.workers.max(
        trace
            .attempts
            .iter()
            .map(|a| a.worker + 1)
            .max()
            .unwrap_or(0),
    );
    for w in 0..workers {
        let tid = w as u64 + 1;
        events.push(meta(
            "thread_name",
            tid,
            json!({"name": format!("worker {w}")}),
        ));
        events.push(meta("thread_sort_index", tid, json!({"sort_index": tid})));
    }
    for p in &trace.phases {
        events.push(json!({
            "name": p.name,
            "cat": "phase",
            "ph": "X",
            "ts": us(p.start_ns, origin),
            "dur": us(p.end_ns, p.start_ns),
            "pid": PID,
            "tid": PARENT_TID,
        }));
    }
    let mut attempts: Vec<_> = trace.attempts.iter().collect();
    attempts.sort_by_key(|a| (a.worker, a.start_ns, a.end_ns));
    let mut track_end: Option<(usize, u64)> = None;
    for a in attempts {
        let start = match track_end {
            Some((w, end)) if w == a.worker => a.start_ns.max(end),
            _ => a.start_ns,
        };
        let end = a.end_ns.max(start);
        track_end = Some((a.worker, end));
        let name = match a.finished {
            true => format!("chunk {}", a.chunk),
            false => format!("chunk {} (lost)", a.chunk),
        };
        events.push(json!({
            "name": name,
            "cat": if a.finished { "chunk" } else { "lost" },
            "ph": "X",
            "ts": us(start, origin),
            "dur": us(end, start),
            "pid": PID,
            "tid": a.worker as u64 + 1,
            "args": {
                "chunk": a.chunk,
                "range": format!("{}..{}", a.range.start, a.range.end),
                "elements": a.range.end - a.range.start,
                "attempt": a.attempt,
                "finished": a.finished,
                "compute_ms": a.compute_ns.map(|ns| ns as f64 / 1e6),
            },
        }));
    }
    for e in &trace.events {
        let tid = match (e.kind, e.worker) {
            (
                TraceEventKind::Death | TraceEventKind::Timeout | TraceEventKind::Restart,
                Some(w),
            ) => w as u64 + 1,
            _ => PARENT_TID,
        };
        let mut name = e.kind.name().to_string();
        if let Some(c) = e.chunk {
            name = format!("{name} chunk {c}");
        }
        events.push(json!({
            "name": name,
            "cat": e.kind.name(),
            "ph": "i",
            "s": "t",
            "ts": us(e.at_ns, origin),
            "pid": PID,
            "tid": tid,
            "args": {
                "worker": e.worker,
                "chunk": e.chunk,
                "detail": e.detail,
            },
        }));
    }
    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "producer": format!("procpool {}", env!("CARGO_PKG_VERSION")),
            "clock": "CLOCK_MONOTONIC, 0 at the trace's first event",
            "origin_monotonic_ns": origin,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::model::{TraceAttempt, TraceEvent, TracePhase};

    fn attempt(
        chunk: u64,
        worker: usize,
        start_ns: u64,
        end_ns: u64,
        finished: bool,
    ) -> TraceAttempt {
        TraceAttempt {
            chunk,
            range: chunk * 10..chunk * 10 + 10,
            worker,
            attempt: u32::from(!finished && chunk == 9),
            start_ns,
            end_ns,
            finished,
            compute_ns: finished.then_some(end_ns - start_ns),
        }
    }

    #[test]
    fn tracks_slices_and_instants_are_labelled_and_start_at_zero() {
        let trace = Trace {
            start_ns: 1_000_000,
            end_ns: 9_000_000,
            attempts: vec![
                attempt(0, 0, 2_000_000, 3_000_000, true),
                // Overlaps the previous slice of its track: moved to its end.
                attempt(1, 0, 2_500_000, 4_000_000, true),
                attempt(2, 1, 2_000_000, 5_000_000, false),
            ],
            phases: vec![TracePhase {
                name: "job".into(),
                start_ns: 1_000_000,
                end_ns: 9_000_000,
            }],
            events: vec![TraceEvent {
                at_ns: 5_000_000,
                kind: TraceEventKind::Death,
                worker: Some(1),
                chunk: Some(2),
                detail: "pid 7: killed by SIGKILL".into(),
            }],
        };
        let labels = TraceLabels {
            title: "procpool test".into(),
            workers: 3,
        };
        let v = chrome_trace(&trace, &labels);
        let events = v["traceEvents"].as_array().unwrap();
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["name"] == "thread_name")
            .map(|e| e["args"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["parent", "worker 0", "worker 1", "worker 2"]);
        let slices: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(slices.len(), 4);
        assert_eq!(slices[0]["ts"], 0.0, "the job phase starts the trace");
        let second = slices.iter().find(|e| e["name"] == "chunk 1").unwrap();
        assert_eq!(
            (second["ts"].as_f64(), second["dur"].as_f64()),
            (Some(2000.0), Some(1000.0))
        );
        assert_eq!(second["args"]["compute_ms"], 1.5);
        let lost = slices.iter().find(|e| e["cat"] == "lost").unwrap();
        assert_eq!(lost["tid"], 2);
        assert_eq!(lost["args"]["range"], "20..30");
        let death = events.iter().find(|e| e["ph"] == "i").unwrap();
        assert_eq!(
            (death["name"].as_str(), death["tid"].as_u64()),
            (Some("death chunk 2"), Some(2))
        );
    }
}
