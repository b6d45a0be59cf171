//! `procpool compare-modes`: the same job on worker processes and on threads, in
//! alternating rounds, and what processes cost on this machine and why.
//!
//! The Python tutorials teach "processes for CPU-bound work, threads for I/O" because of
//! the GIL. Rust has none, so here the two differ only by what processes add: starting
//! them, handing out chunks across processes, and page faults on a shared mapping instead
//! of private memory. Each round runs both modes (processes first, then threads, so slow
//! drift of the machine hits both alike), each a full verified run ([`crate::run()`]); the
//! [`ModesComparison`] puts their walls side by side with the parts that explain the gap.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::lab::measure::{Ratio, Summary, ratio, summarize};
use crate::lab::meta::Meta;
use crate::lab::model::{Mode, Report};
use crate::lab::options::{Runner, first_refused};
use crate::lab::run::{RunOptions, options_set, run};
use crate::workload::Workload;

/// The rounds `procpool compare-modes` runs without `--repeat`.
pub const DEFAULT_ROUNDS: usize = 3;

/// One mode's measurements over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeSide {
    /// Wall time of the parallel run (starting included), in seconds.
    pub wall_s: Summary,
    /// Seconds spent starting the workers (processes until they are ready for work, or threads).
    pub spawn_s: Summary,
    /// Kernel seconds summed over the workers.
    pub compute_s: Summary,
    /// Seconds per worker spent handing out chunks (dispatch per chunk × chunks / workers).
    pub dispatch_s: Summary,
    /// Minor page faults summed over the workers, per run (`None` when not counted).
    pub minor_faults: Option<Summary>,
    /// True when every round's output equalled the single-process run's (`None` when not
    /// checked).
    pub verified: Option<bool>,
}

/// Processes against threads on one job (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModesComparison {
    /// The schema and procpool versions, the start time and the machine (flattened).
    #[serde(flatten)]
    pub meta: Meta,
    /// Workload name.
    pub workload: String,
    /// Number of elements computed per run.
    pub n: u64,
    /// Workers in either mode.
    pub workers: usize,
    /// Logical CPUs this process may use.
    pub cores_logical: usize,
    /// Rounds run (each: processes, then threads).
    pub rounds: usize,
    /// The worker processes.
    pub processes: ModeSide,
    /// The threads of one process.
    pub threads: ModeSide,
    /// Processes' wall time over threads' (above 1: processes slower), with its sd.
    pub ratio: Ratio,
    /// Sentences with this run's numbers: where the difference came from.
    pub why: Vec<String>,
    /// When each wins, in general (the tutorials' framing, corrected for Rust).
    pub framing: Vec<String>,
}

/// The general framing printed under every comparison.
pub const FRAMING: [&str; 4] = [
    "Processes win when a crash must not take the job down (a dead worker is replaced and \
     its chunk retried), when workers must not share a heap (a leak or a corruption stays \
     in one process), and in Python, where the GIL lets one thread run bytecode at a time.",
    "Threads win when the job is short or writes much memory: nothing to start, no chunk \
     crosses a process boundary, and page faults hit private memory, not a shared mapping.",
    "Rust has no GIL: for CPU-bound work threads scale like processes, so what processes \
     buy here is isolation, at the cost measured above.",
    "Waiting (I/O-bound) work is the tutorials' threads-or-async case on either side.",
];

/// Runs `workload` on `n` elements as processes and as threads, alternating, `rounds`
/// times each, with everything else from `options` (its `mode` and `repeat` are ignored).
/// `each` sees every run's report as it finishes (for progress).
pub fn compare_modes<W: Workload>(
    workload: &W,
    n: u64,
    options: &RunOptions,
    rounds: usize,
    mut each: impl FnMut(&Report),
) -> Result<ModesComparison> {
    if rounds == 0 {
        return Err(Error::invalid(
            "repeat",
            "a comparison needs at least one round in `repeat`",
        ));
    }
    // Refused before the first run, not when the threads' turn comes (`lab::options`);
    // the mode is this function's to set.
    let set = options_set(options).filter(|name| *name != "mode");
    if let Some(refusal) = first_refused(Runner::CompareModes, set) {
        return Err(refusal);
    }
    let mut processes = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..rounds {
        for mode in [Mode::Processes, Mode::Threads] {
            let mut one = options.clone();
            one.mode = mode;
            one.repeat = 1;
            one.warmup = 0;
            let report = run(workload, n, &one)?;
            each(&report);
            match mode {
                Mode::Processes => processes.push(report),
                _ => threads.push(report),
            }
        }
    }
    let first = &processes[0];
    let processes_side = side(&processes);
    let threads_side = side(&threads);
    let output_bytes = n.saturating_mul(std::mem::size_of::<W::Output>() as u64);
    let why = why(
        first.workers,
        n,
        output_bytes,
        &processes_side,
        &threads_side,
    );
    Ok(ModesComparison {
        meta: first.meta.clone(),
        workload: W::NAME.to_string(),
        n,
        workers: first.workers,
        cores_logical: first.cores_logical,
        rounds,
        ratio: ratio(&processes_side.wall_s, &threads_side.wall_s),
        processes: processes_side,
        threads: threads_side,
        why,
        framing: FRAMING.iter().map(|s| s.to_string()).collect(),
    })
}

/// One mode's summaries over its reports (at least one).
fn side(reports: &[Report]) -> ModeSide {
    let of = |f: &dyn Fn(&Report) -> f64| {
        let samples: Vec<f64> = reports.iter().map(f).collect();
        summarize(&samples).expect("at least one round")
    };
    let faults: Option<Vec<f64>> = reports
        .iter()
        .map(|r| {
            r.per_worker
                .iter()
                .map(|w| w.minor_faults)
                .sum::<Option<u64>>()
                .map(|f| f as f64)
        })
        .collect();
    let verified = reports
        .iter()
        .map(|r| r.verified)
        .try_fold(true, |all, v| v.map(|v| all && v));
    ModeSide {
        wall_s: of(&|r| r.pool_wall_s),
        spawn_s: of(&|r| r.spawn_s),
        compute_s: of(&|r| r.compute_s),
        dispatch_s: of(&|r| r.dispatch_per_chunk_s * r.chunks as f64 / r.workers.max(1) as f64),
        minor_faults: faults.and_then(|f| summarize(&f)),
        verified,
    }
}

/// Where the difference came from, in sentences with the run's numbers.
pub(crate) fn why(
    workers: usize,
    n: u64,
    output_bytes: u64,
    p: &ModeSide,
    t: &ModeSide,
) -> Vec<String> {
    use crate::units::{percent, seconds_short as s};
    let mut lines = Vec::new();
    let r = p.wall_s.mean / t.wall_s.mean;
    let verdict = if r > 1.0 {
        format!(
            "processes took {} as long as threads",
            crate::units::times(r)
        )
    } else {
        format!(
            "threads took {} as long as processes",
            crate::units::times(1.0 / r)
        )
    };
    lines.push(format!(
        "{verdict}: {} against {} for {n} elements on {}.",
        s(p.wall_s.mean),
        s(t.wall_s.mean),
        crate::units::count(workers, "worker")
    ));
    lines.push(format!(
        "Start: {} to start {} worker processes ready for work, against {} for threads.",
        s(p.spawn_s.mean),
        workers,
        s(t.spawn_s.mean)
    ));
    lines.push(format!(
        "Dispatch: {} per worker handing out chunks across processes, against {} on threads.",
        s(p.dispatch_s.mean),
        s(t.dispatch_s.mean)
    ));
    let extra = if t.compute_s.mean > 0.0 {
        let change = p.compute_s.mean / t.compute_s.mean - 1.0;
        let word = if change >= 0.0 { "more" } else { "less" };
        format!(" ({} {word})", percent(change.abs()))
    } else {
        String::new()
    };
    lines.push(format!(
        "Compute: the workers computed {} in total as processes, {} as threads{extra}.",
        s(p.compute_s.mean),
        s(t.compute_s.mean)
    ));
    if let (Some(pf), Some(tf)) = (&p.minor_faults, &t.minor_faults) {
        let pages = (output_bytes as f64 / 4096.0).max(1.0);
        // Per fault, compute attributes everything to faults: on a memory-bound kernel
        // they are most of it, and the same count costing more is the shared mapping's price.
        let cost = if pf.mean > 0.0 && tf.mean > 0.0 {
            format!(
                "; {} of compute per fault as processes, {} as threads",
                s(p.compute_s.mean / pf.mean),
                s(t.compute_s.mean / tf.mean)
            )
        } else {
            String::new()
        };
        lines.push(format!(
            "Page faults: {:.0} in the worker processes ({} per 4 KiB page of results, a \
             shared mapping), {:.0} on threads ({}, private memory){cost}.",
            pf.mean,
            crate::units::num(pf.mean / pages),
            tf.mean,
            crate::units::num(tf.mean / pages)
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(x: f64) -> Summary {
        summarize(&[x]).unwrap()
    }

    fn side(wall: f64, spawn: f64, compute: f64, faults: f64) -> ModeSide {
        ModeSide {
            wall_s: one(wall),
            spawn_s: one(spawn),
            compute_s: one(compute),
            dispatch_s: one(0.000_1),
            minor_faults: Some(one(faults)),
            verified: Some(true),
        }
    }

    #[test]
    fn why_names_start_dispatch_compute_and_faults_with_numbers() {
        // squares 1e7 on 2 workers: 80 MB, 19531 pages.
        let p = side(0.060, 0.004, 0.100, 39_000.0);
        let t = side(0.040, 0.000_1, 0.070, 19_600.0);
        let lines = why(2, 10_000_000, 80_000_000, &p, &t);
        assert_eq!(
            lines[0],
            "processes took 1.50× as long as threads: 60 ms against 40 ms for 10000000 \
             elements on 2 workers."
        );
        assert!(
            lines[1].starts_with("Start: 4 ms to start 2 worker processes"),
            "{lines:?}"
        );
        assert!(lines[3].ends_with("(43% more)."), "{lines:?}");
        assert_eq!(
            lines[4],
            "Page faults: 39000 in the worker processes (2 per 4 KiB page of results, a \
             shared mapping), 19600 on threads (1, private memory); 2.6 µs of compute per \
             fault as processes, 3.6 µs as threads."
        );
        // Threads slower, no faults counted: said the other way round, no fault line.
        let mut p = side(0.030, 0.004, 0.060, 0.0);
        p.minor_faults = None;
        let lines = why(2, 100, 800, &p, &t);
        assert!(
            lines[0].starts_with("threads took 1.33× as long as processes"),
            "{lines:?}"
        );
        assert_eq!(lines.len(), 4);
    }
}
