//! The human-readable report.

use std::fmt::Write;

use super::Report;
use crate::limits::human_bytes;
use crate::run::Mode;

/// Renders the report for a terminal.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let physical = r
        .cores_physical
        .map(|p| format!(" / {p} physical"))
        .unwrap_or_default();
    let plural = if r.workers == 1 { "" } else { "s" };
    let how = match (r.mode, r.start) {
        (Mode::Processes, Some(start)) => {
            let es = if r.workers == 1 { "" } else { "es" };
            format!("{} worker process{es} started by {start}", r.workers)
        }
        (Mode::Processes, None) => format!("{} worker process{plural}", r.workers),
        (Mode::Threads, _) => format!("{} thread{plural} of one process", r.workers),
        (Mode::Single, _) => "a single process".to_string(),
    };
    let _ = writeln!(
        s,
        "procpool: {} n={} on {how}; {} logical{physical} cores",
        r.workload, r.n, r.cores_logical
    );
    let _ = writeln!(
        s,
        "  chunks       {} × {} elements, {} in flight per worker",
        r.chunks, r.chunk_size, r.inflight
    );
    match r.baseline_wall_s {
        Some(b) => {
            let _ = writeln!(s, "  baseline     {}  single process", secs(b));
        }
        None => {
            let _ = writeln!(s, "  baseline     skipped (--no-baseline)");
        }
    }
    let _ = writeln!(
        s,
        "  pool         {}  = start {} + run {}",
        secs(r.pool_wall_s),
        secs(r.spawn_s),
        secs(r.run_s)
    );
    let _ = writeln!(
        s,
        "  compute      {}  summed over workers",
        secs(r.compute_s)
    );
    if let (Some(sp), Some(eff)) = (r.speedup, r.efficiency) {
        let _ = writeln!(s, "  speedup      {sp:.2}×     baseline / pool");
        let _ = writeln!(
            s,
            "  efficiency   {:.1} %    speedup / workers",
            eff * 100.0
        );
    }
    match (r.verified, &r.mismatch) {
        (Some(true), _) => {
            let _ = writeln!(
                s,
                "  verified     yes: all {} elements equal the single-process run",
                r.n
            );
        }
        (Some(false), Some(m)) => {
            let _ = writeln!(
                s,
                "  verified     NO: element {} is {} in the pool output but {} in the single-process run",
                m.index, m.pool, m.baseline
            );
        }
        _ => {
            let _ = writeln!(s, "  verified     not checked (--no-baseline)");
        }
    }
    let _ = writeln!(s, "  checksum     {}", r.checksum);
    if let Some(reduction) = r.reduction {
        let baseline = r
            .baseline_reduction
            .map(|b| format!("  (single process: {b})"))
            .unwrap_or_default();
        let _ = writeln!(s, "  reduction    {reduction}{baseline}");
    }
    let _ = writeln!(
        s,
        "  ipc          {} messages, {} over channels; {} of results through shared memory",
        r.ipc_messages,
        human_bytes(u128::from(r.ipc_bytes)),
        human_bytes(u128::from(r.shm_bytes))
    );
    if !r.per_worker.is_empty() {
        let _ = writeln!(s, "  per worker   id      pid  chunks  compute");
        for w in &r.per_worker {
            let _ = writeln!(
                s,
                "               {:>2} {:>8} {:>7}  {}",
                w.id,
                w.pid,
                w.chunks,
                secs(w.compute_s)
            );
        }
    }
    if r.restarts > 0 {
        let _ = writeln!(
            s,
            "  restarts     {} (chunks handed out again: {})",
            r.restarts, r.retried_chunks
        );
        for d in &r.deaths {
            let at = d
                .chunk
                .map(|c| format!(" while running chunk {c}"))
                .unwrap_or_else(|| " while idle".into());
            let replaced = d
                .replaced_by
                .map(|p| format!("; replaced by pid {p}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "               worker {} (pid {}) {}{at}{replaced}",
                d.id, d.pid, d.cause
            );
        }
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

fn secs(x: f64) -> String {
    if x >= 1.0 {
        format!("{x:.3} s")
    } else {
        format!("{:.2} ms", x * 1e3)
    }
}
