//! The human-readable report.

use std::fmt::Write;

use crate::engine::protocol::Transport;
use crate::lab::measure::Summary;
use crate::lab::model::Mode;
use crate::lab::model::Report;
use crate::units::{bytes as human_bytes, seconds as secs};

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
            let pinned = if r.pinned { ", pinned to CPUs" } else { "" };
            format!(
                "{} worker process{es} started by {start}{pinned}",
                r.workers
            )
        }
        (Mode::Processes, None) => format!("{} worker process{plural}", r.workers),
        (Mode::Threads, _) => format!("{} thread{plural} of one process", r.workers),
        (Mode::Single, _) => "a single process".to_string(),
    };
    let _ = writeln!(
        s,
        "procpool: {} n={} on {how}; {} logical{physical} {}",
        r.workload,
        r.n,
        r.cores_logical,
        if r.cores_logical == 1 && r.cores_physical.unwrap_or(1) == 1 {
            "core"
        } else {
            "cores"
        }
    );
    let via = match r.transport {
        Some(Transport::Shm) => ", results through shared memory",
        Some(Transport::Channel) => ", results through the channels",
        None => "",
    };
    let _ = writeln!(
        s,
        "  chunks       {} × {} elements, {} schedule, {} in flight per worker{via}",
        r.chunks, r.chunk_size, r.schedule, r.inflight
    );
    if let Some(auto) = &r.auto_chunk {
        let _ = writeln!(s, "  chunk size   auto: {}", auto.reason);
    }
    let spread = |summary: Option<&Summary>| match summary {
        Some(x) if x.runs > 1 => format!(
            " ± {} (min {}, max {}, {} runs)",
            secs(x.sd),
            secs(x.min),
            secs(x.max),
            x.runs
        ),
        _ => String::new(),
    };
    let repeat = r.repeat.as_ref();
    match r.baseline_wall_s {
        Some(b) => {
            let _ = writeln!(
                s,
                "  baseline     {}{}  {}",
                secs(b),
                spread(repeat.and_then(|x| x.baseline_s.as_ref())),
                if r.baseline_estimated {
                    "single process, known without running it (n × the wait per element)"
                } else {
                    "single process"
                }
            );
        }
        None => {
            let _ = writeln!(s, "  baseline     skipped (--no-baseline)");
        }
    }
    let _ = writeln!(
        s,
        "  pool         {}{}  = start {} + run {}",
        secs(r.pool_wall_s),
        spread(repeat.map(|x| &x.pool_s)),
        secs(r.spawn_s),
        secs(r.run_s)
    );
    let b = &r.breakdown;
    let _ = writeln!(
        s,
        "  where        start {} + compute {} + waiting on IPC/dispatch {} + idle at the end {} \
         (per worker, mean)",
        secs(b.spawn_s),
        secs(b.compute_s),
        secs(b.ipc_wait_s),
        secs(b.imbalance_idle_s)
    );
    let _ = writeln!(
        s,
        "  compute      {} summed over workers, {} on the busiest",
        secs(r.compute_s),
        secs(r.compute_max_s)
    );
    if r.chunk_rtt_mean_s > 0.0 {
        let _ = writeln!(
            s,
            "  per chunk    round trip {}, compute {}: messaging costs {} a chunk",
            secs(r.chunk_rtt_mean_s),
            secs(r.chunk_compute_mean_s),
            secs((r.chunk_rtt_mean_s - r.chunk_compute_mean_s).max(0.0))
        );
    }
    if let (Some(sp), Some(eff)) = (r.speedup, r.efficiency) {
        let sd = repeat
            .and_then(|x| x.speedup)
            .filter(|_| repeat.is_some_and(|x| x.runs > 1))
            .map(|x| format!(" ± {:.2}", x.sd))
            .unwrap_or_default();
        let _ = writeln!(s, "  speedup      {sp:.2}×{sd}     baseline / pool");
        let _ = writeln!(
            s,
            "  efficiency   {:.1} %    speedup / workers",
            eff * 100.0
        );
    }
    match (r.verified, &r.mismatch) {
        (Some(true), _) => {
            let rounds = repeat.map_or(String::new(), |x| format!(", in each of {} runs", x.runs));
            let _ = writeln!(
                s,
                "  verified     yes: all {} elements equal the single-process run{rounds} ({} to check)",
                r.n,
                secs(b.verify_s)
            );
        }
        (Some(false), Some(m)) => {
            let _ = writeln!(
                s,
                "  verified     NO: element {} is {} in the pool output but {} in the single-process run",
                m.index, m.pool, m.baseline
            );
        }
        (Some(false), None) => {
            let _ = writeln!(
                s,
                "  verified     NO: the per-chunk reductions differ ({:?} against {:?})",
                r.reduction, r.baseline_reduction
            );
        }
        (None, _) => {
            let _ = writeln!(s, "  verified     not checked (--no-baseline)");
        }
    }
    let _ = writeln!(s, "  checksum     {}", r.checksum);
    if let Some(o) = &r.output {
        let _ = writeln!(
            s,
            "  output       {} written to {} in {} windows of {} ({:.0} MB/s); writing took {} on its own thread",
            human_bytes(u128::from(o.bytes)),
            o.path,
            o.windows,
            human_bytes(u128::from(o.window_bytes)),
            o.bytes as f64 / r.pool_wall_s.max(1e-9) / 1e6,
            secs(o.write_s)
        );
    }
    if let Some(reduction) = r.reduction {
        let baseline = r
            .baseline_reduction
            .map(|b| format!("  (single process: {b})"))
            .unwrap_or_default();
        let _ = writeln!(s, "  reduction    {reduction}{baseline}");
    }
    if r.mode == Mode::Processes {
        let _ = writeln!(
            s,
            "  ipc          {} messages, {} over channels{}; {} of results through shared memory",
            r.ipc_messages,
            human_bytes(u128::from(r.ipc_bytes)),
            if r.channel_result_bytes > 0 {
                format!(
                    " ({} of them results)",
                    human_bytes(u128::from(r.channel_result_bytes))
                )
            } else {
                String::new()
            },
            human_bytes(u128::from(r.shm_bytes))
        );
    }
    if !r.per_worker.is_empty() {
        let _ = writeln!(
            s,
            "  per worker   id      pid  chunks    compute        cpu   peak rss  idle at end{}",
            if r.pinned { "  cpu" } else { "" }
        );
        for w in &r.per_worker {
            let _ = writeln!(
                s,
                "               {:>2} {:>8} {:>7} {:>10} {:>10} {:>10} {:>12}{}",
                w.id,
                w.pid,
                w.chunks,
                secs(w.compute_s),
                w.cpu_s.map_or("-".into(), secs),
                w.peak_rss_bytes
                    .map_or("-".into(), |b| human_bytes(u128::from(b))),
                secs(w.idle_end_s),
                w.cpu.map_or(String::new(), |c| format!(" {c:>4}"))
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
    s.push_str(&crate::report::advice::render(&r.advice));
    s
}
