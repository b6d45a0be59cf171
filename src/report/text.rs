//! The human-readable report.

use std::fmt::Write;

use crate::lab::measure::Summary;
use crate::lab::meta::WorkersFrom;
use crate::lab::model::Mismatch;
use crate::lab::model::Mode;
use crate::lab::model::Report;
use crate::lab::model::{Dispatch, Transport};
use crate::units::{bytes as human_bytes, count, seconds as secs};

/// A per-chunk cost: in nanoseconds below a microsecond (a queue claim is tens of ns),
/// like [`secs`] above.
fn per_chunk(x: f64) -> String {
    if x > 0.0 && x < 1e-6 {
        crate::units::seconds_short(x)
    } else {
        secs(x)
    }
}

/// One sentence on where two outputs differ: the element's index, both values, and for a
/// workload with a tolerance the lane beyond it and by how much.
///
/// ```
/// use procpool::lab::Mismatch;
///
/// let m = Mismatch {
///     index: 7,
///     pool: "[1.0, 2.5]".into(),
///     baseline: "[1.0, 2.0]".into(),
///     lane: Some(1),
///     difference: Some(0.5),
///     ulps: Some(1 << 51),
/// };
/// assert_eq!(
///     procpool::report::mismatch_text(&m),
///     "element 7 is [1.0, 2.5] in the pool output but [1.0, 2.0] in the single-process run \
///      (lane 1 differs by 0.5, 2251799813685248 ulps: beyond the tolerance)"
/// );
/// ```
pub fn mismatch_text(m: &Mismatch) -> String {
    let mut text = format!(
        "element {} is {} in the pool output but {} in the single-process run",
        m.index, m.pool, m.baseline
    );
    if let Some(lane) = m.lane {
        let by = match (m.difference, m.ulps) {
            (Some(d), Some(u)) => format!(" differs by {}, {u} ulps", short(d)),
            (Some(d), None) => format!(" differs by {}", short(d)),
            _ => " holds a NaN".to_string(),
        };
        let _ = write!(text, " (lane {lane}{by}: beyond the tolerance)");
    }
    text
}

/// A float as people read it: plain when moderate, in scientific notation when tiny or huge.
fn short(x: f64) -> String {
    if x == 0.0 || (1e-4..1e6).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}

/// The machine's CPUs, what limited them, and how the worker count was decided:
/// `2 CPUs (2 physical cores) → 2 workers`, `2 CPUs (2 physical cores), affinity 1 of
/// them → 1 worker`, `2 CPUs, quota 1.5 → 1 CPU`, `2 CPUs; 3 workers from PROCPOOL_WORKERS`.
fn cpus_line(r: &Report) -> String {
    let m = &r.meta.machine;
    let mut line = count(m.cpus_online, "CPU");
    if let Some(p) = m.cores_physical {
        let _ = write!(line, " ({})", count(p, "physical core"));
    }
    if m.cpus_allowed < m.cpus_online {
        let _ = write!(line, ", affinity {} of them", m.cpus_allowed);
    }
    if let Some(q) = m.cpu_quota {
        let _ = write!(line, ", quota {}", crate::units::num(q));
    }
    let limited = m.cpus_effective < m.cpus_online || m.cpu_quota.is_some();
    match (r.workers_from, r.mode) {
        (WorkersFrom::Cpus, Mode::Processes | Mode::Threads) => {
            let _ = write!(line, " → {}", count(r.workers, "worker"));
        }
        (WorkersFrom::Env, Mode::Processes | Mode::Threads) => {
            if limited {
                let _ = write!(line, " → {}", count(m.cpus_effective, "CPU"));
            }
            let _ = write!(
                line,
                "; {} from {}",
                count(r.workers, "worker"),
                crate::lab::WORKERS_ENV
            );
        }
        _ if limited => {
            let _ = write!(line, " → {}", count(m.cpus_effective, "CPU"));
        }
        _ => {}
    }
    line
}

/// How the workers started and what one cost: " (forkserver, 450.0 µs a worker)"; empty
/// without a pool.
fn start_cost(r: &Report) -> String {
    match (r.start, r.start_per_worker_s) {
        (Some(start), Some(each)) => format!(" ({start}, {} a worker)", secs(each)),
        (Some(start), None) => format!(" ({start})"),
        _ => String::new(),
    }
}

/// Renders the report for a terminal.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let how = match (r.mode, r.start) {
        (Mode::Processes, Some(start)) => {
            let pinned = if r.pinned { ", pinned to CPUs" } else { "" };
            format!(
                "{} started by {start}{pinned}",
                count(r.workers, "worker process")
            )
        }
        (Mode::Processes, None) => count(r.workers, "worker process"),
        (Mode::Threads, _) => format!("{} of one process", count(r.workers, "thread")),
        (Mode::Single, _) => "a single process".to_string(),
    };
    #[cfg(feature = "mpi")]
    let how = match &r.mpi {
        Some(m) => format!(
            "{} (mpirun ranks 1..{}; rank 0 dispatches and verifies)",
            count(r.workers, "MPI worker rank"),
            m.ranks - 1
        ),
        None => how,
    };
    let _ = writeln!(
        s,
        "procpool: {} n={} on {how}; {}",
        r.workload,
        r.n,
        cpus_line(r)
    );
    let via = match r.transport {
        Some(Transport::Shm) => ", results through shared memory",
        Some(Transport::Channel) => ", results through the channels",
        None => "",
    };
    #[cfg(feature = "mpi")]
    let via = match &r.mpi {
        Some(m) if m.nodes > 1 && m.route == "put" => {
            ", results through the shared window (MPI_Put into it from other nodes)"
        }
        Some(m) if m.nodes > 1 => {
            ", results through the shared window (from other nodes in replies)"
        }
        Some(_) => ", results through the shared window",
        None => via,
    };
    // The queue has nothing in flight: a worker claims its next chunk when it is done.
    let handed = match r.dispatch {
        Some(Dispatch::Queue) => "claimed from the shared-memory queue".to_string(),
        Some(Dispatch::Channel) | None => format!("{} in flight per worker", r.inflight),
    };
    let _ = writeln!(
        s,
        "  chunks       {} × {}, {} schedule, {handed}{via}",
        r.chunks,
        count(r.chunk_size, "element"),
        r.schedule
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
            if let Some(os) = r.baseline_os {
                let _ = writeln!(
                    s,
                    "               cpu {}, faults {} minor + {} major, context switches {} \
                     voluntary + {} involuntary",
                    secs(os.cpu_s),
                    os.minor_faults,
                    os.major_faults,
                    os.voluntary_switches,
                    os.involuntary_switches
                );
            }
        }
        None => {
            let _ = writeln!(s, "  baseline     skipped (--no-baseline)");
        }
    }
    let _ = writeln!(
        s,
        "  pool         {}{}  = start {}{} + run {}",
        secs(r.pool_wall_s),
        spread(repeat.map(|x| &x.pool_s)),
        secs(r.spawn_s),
        start_cost(r),
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
        let _ = match r.dispatch {
            Some(Dispatch::Queue) => writeln!(
                s,
                "  per chunk    dispatch costs {} a chunk (claim + bookkeeping), compute {}",
                per_chunk(r.dispatch_per_chunk_s),
                secs(r.chunk_compute_mean_s)
            ),
            Some(Dispatch::Channel) | None => writeln!(
                s,
                "  per chunk    round trip {}, compute {}: messaging costs {} a chunk",
                secs(r.chunk_rtt_mean_s),
                secs(r.chunk_compute_mean_s),
                per_chunk(r.dispatch_per_chunk_s)
            ),
        };
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
    for caveat in &r.caveats {
        let _ = writeln!(s, "  caveat       {caveat}");
    }
    if let Some(line) = contention_line(&r.contention) {
        let _ = writeln!(s, "  cpu share    {line}");
    }
    match (r.verified, &r.mismatch) {
        (Some(true), _) => {
            let rounds = repeat.map_or(String::new(), |x| format!(", in each of {} runs", x.runs));
            let one = r.n == 1;
            let how = match &r.tolerance {
                Some(t) => format!(
                    "match{} the single-process run within {t}",
                    if one { "es" } else { "" }
                ),
                None => format!("equal{} the single-process run", if one { "s" } else { "" }),
            };
            let _ = writeln!(
                s,
                "  verified     yes: {} {how}{rounds} ({} to check)",
                match r.n {
                    1 => "the 1 element".to_string(),
                    n => format!("all {n} elements"),
                },
                secs(b.verify_s)
            );
        }
        (Some(false), Some(m)) => {
            let _ = writeln!(s, "  verified     NO: {}", mismatch_text(m));
        }
        (Some(false), None) => {
            let _ = writeln!(
                s,
                "  verified     NO: the reductions differ ({} against {})",
                json_or_none(r.reduction.as_ref()),
                json_or_none(r.baseline_reduction.as_ref())
            );
        }
        (None, _) => {
            let _ = writeln!(s, "  verified     not checked (--no-baseline)");
        }
    }
    let _ = writeln!(s, "  checksum     {}  (SHA-256 of the output)", r.checksum);
    if let Some(o) = &r.output {
        let _ = writeln!(
            s,
            "  output       {} written to {} in {} of {} ({}); writing took {} on its own thread",
            human_bytes(u128::from(o.bytes)),
            o.path,
            count(o.windows, "window"),
            human_bytes(u128::from(o.window_bytes)),
            crate::units::rate(o.bytes as f64 / r.pool_wall_s.max(1e-9)),
            secs(o.write_s)
        );
    }
    if let Some(reduction) = &r.reduction {
        let baseline = r
            .baseline_reduction
            .as_ref()
            .map(|b| format!("  (single process: {b})"))
            .unwrap_or_default();
        let _ = writeln!(s, "  reduction    {reduction}{baseline}");
    }
    if r.dispatch == Some(Dispatch::Queue) {
        let _ = writeln!(
            s,
            "  queue        {}, {}, {}, {}; {} on the control channel",
            count(r.claims, "claim"),
            count(r.worker_sleeps, "worker sleep"),
            count(r.parent_sleeps, "parent sleep"),
            count(r.wake_messages, "wake message"),
            count(r.ipc_messages, "message")
        );
    }
    #[cfg(feature = "mpi")]
    let mpi_ipc = r.mpi.as_ref().map(|m| {
        format!(
            "  ipc          {}, {} over MPI{}; {} of results through the shared window{}",
            count(r.ipc_messages, "message"),
            human_bytes(u128::from(r.ipc_bytes)),
            match r.channel_result_bytes {
                0 => String::new(),
                b => format!(" ({} of them results)", human_bytes(u128::from(b))),
            },
            human_bytes(u128::from(m.shm_result_bytes)),
            match (m.route.as_str(), m.cross_node_bytes) {
                ("put", b) if b > 0 => format!(", {} put into it", human_bytes(u128::from(b))),
                _ => String::new(),
            }
        )
    });
    #[cfg(not(feature = "mpi"))]
    let mpi_ipc: Option<String> = None;
    if let Some(line) = mpi_ipc {
        let _ = writeln!(s, "{line}");
    } else if r.mode == Mode::Processes {
        let _ = writeln!(
            s,
            "  ipc          {}, {} over channels{}; {} of results through shared memory",
            count(r.ipc_messages, "message"),
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
    if r.input_bytes > 0 {
        let _ = writeln!(
            s,
            "  input        {} shared read-only (sealed memfd), 0 B copied per worker",
            human_bytes(u128::from(r.input_bytes))
        );
    }
    if r.param_bytes > crate::lab::model::LARGE_PARAMS_BYTES {
        let _ = writeln!(
            s,
            "  parameters   {} encoded, sent to each worker when they change",
            human_bytes(u128::from(r.param_bytes))
        );
    }
    if !r.per_worker.is_empty() {
        // Claims only with the queue (with channel dispatch a worker claims nothing).
        let queue = r.dispatch == Some(Dispatch::Queue);
        let _ = writeln!(
            s,
            "  per worker   id      pid  chunks{}    compute        cpu   peak rss  idle at end{}",
            if queue { "  claims" } else { "" },
            if r.pinned { "  cpu" } else { "" }
        );
        for w in &r.per_worker {
            let _ = writeln!(
                s,
                "               {:>2} {:>8} {:>7}{} {:>10} {:>10} {:>10} {:>12}{}",
                w.id,
                w.pid,
                w.chunks,
                if queue {
                    format!(" {:>7}", w.claims)
                } else {
                    String::new()
                },
                secs(w.compute_s),
                w.cpu_s.map_or("-".into(), secs),
                w.peak_rss_bytes
                    .map_or("-".into(), |b| human_bytes(u128::from(b))),
                secs(w.idle_end_s),
                w.cpu.map_or(String::new(), |c| format!(" {c:>4}"))
            );
        }
    }
    // What the kernel counted for each worker during the job (not with channel dispatch).
    if r.per_worker.iter().any(|w| w.minor_faults.is_some()) {
        let _ = writeln!(
            s,
            "  os counts    id  minor faults  major faults  voluntary switches  involuntary"
        );
        let n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        for w in &r.per_worker {
            let _ = writeln!(
                s,
                "               {:>2} {:>13} {:>13} {:>19} {:>12}",
                w.id,
                n(w.minor_faults),
                n(w.major_faults),
                n(w.voluntary_switches),
                n(w.involuntary_switches)
            );
        }
    }
    // Only a set-up that did something: the default one takes a clock read's time.
    let setups: Vec<f64> = r
        .per_worker
        .iter()
        .map(|w| w.setup_s)
        .filter(|&s| s >= 10e-6)
        .collect();
    if !setups.is_empty() {
        let mean = setups.iter().sum::<f64>() / setups.len() as f64;
        let _ = writeln!(
            s,
            "  set-up       {} per worker (mean of {}), once per worker before its first chunk",
            secs(mean),
            setups.len()
        );
    }
    if r.recycles > 0 {
        let _ = writeln!(
            s,
            "  recycled     {} worker process{} replaced at their limit (not deaths)",
            r.recycles,
            if r.recycles == 1 { "" } else { "es" }
        );
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
    #[cfg(feature = "mpi")]
    if let Some(m) = &r.mpi {
        let _ = writeln!(
            s,
            "mpi:           {} ranks on {} ({} per node); results: {} through the shared \
             window, {} across nodes{}",
            m.ranks,
            crate::units::count(m.nodes, "node"),
            m.ranks_per_node
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("+"),
            crate::units::bytes(u128::from(m.shm_result_bytes)),
            crate::units::bytes(u128::from(m.cross_node_bytes)),
            match (m.nodes, m.route.as_str()) {
                (1, _) => "",
                (_, "put") => " (MPI_Put into rank 0's window)",
                _ => " (sent back in each chunk's reply)",
            }
        );
        if let Some(launch) = m.launch_s {
            let _ = writeln!(
                s,
                "               start-up: {} from mpirun's start to the first chunk (10-ms steps)",
                crate::units::seconds_short(launch)
            );
        }
        let _ = writeln!(s, "               waiting: {}", m.wait);
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s.push_str(&crate::report::advice::render(&r.advice));
    s
}

/// A reduction as compact JSON, or `none`.
/// What other processes took from the run, in one line; `None` when nothing was readable.
fn contention_line(c: &crate::lab::Contention) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(share) = c.cpu_share_mean {
        parts.push(format!("workers {share:.2} of a core each while computing"));
    }
    if let Some(b) = c.baseline_cpu_share {
        parts.push(format!("single process {b:.2}"));
    }
    match (c.load_start, c.load_end) {
        (Some(a), Some(b)) => parts.push(format!("load {a:.2} at the start, {b:.2} at the end")),
        (Some(a), None) | (None, Some(a)) => parts.push(format!("load {a:.2}")),
        (None, None) => {}
    }
    if let Some(steal) = c.steal_share {
        parts.push(format!("steal {:.1} %", steal * 100.0));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn json_or_none(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(|| "none".to_string(), serde_json::Value::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::model::Breakdown;
    use crate::lab::model::Schedule;
    use crate::lab::model::{StartMethod, WorkerStats};

    /// Two workers, 1000 chunks of 1000 `squares`, the counters of a queue run.
    fn report(dispatch: Dispatch) -> Report {
        let queue = dispatch == Dispatch::Queue;
        let worker = |id: usize, chunks: u64| WorkerStats {
            id,
            pid: 100 + id as u32,
            chunks,
            compute_s: 0.004,
            cpu_s: Some(0.004),
            peak_rss_bytes: Some(8 << 20),
            idle_end_s: 0.000_05,
            cpu: None,
            claims: if queue { chunks } else { 0 },
            dispatch_s: if queue { 0.000_05 } else { 0.0 },
            sleeps: 0,
            setup_s: 0.0,
            minor_faults: None,
            major_faults: None,
            voluntary_switches: None,
            involuntary_switches: None,
        };
        Report {
            meta: crate::lab::Meta::sample(),
            workload: "squares".into(),
            params: serde_json::json!({}),
            mode: Mode::Processes,
            start: Some(StartMethod::Spawn),
            schedule: Schedule::Dynamic,
            transport: Some(Transport::Shm),
            dispatch: Some(dispatch),
            pinned: false,
            n: 1_000_000,
            workers: 2,
            workers_from: WorkersFrom::Given,
            chunk_size: 1000,
            chunks: 1000,
            auto_chunk: None,
            inflight: if queue { 1 } else { 9 },
            cores_logical: 2,
            cores_physical: Some(2),
            baseline_wall_s: Some(0.004),
            baseline_estimated: false,
            baseline_os: None,
            pool_wall_s: 0.012,
            spawn_s: 0.006,
            start_per_worker_s: Some(0.003),
            run_s: 0.006,
            compute_s: 0.008,
            compute_max_s: 0.004,
            breakdown: Breakdown::new(0.012, 0.006, &[], 0.002),
            chunk_rtt_mean_s: if queue { 8.1e-6 } else { 15.7e-6 },
            chunk_compute_mean_s: 8e-6,
            dispatch_per_chunk_s: if queue { 84e-9 } else { 7.7e-6 },
            speedup: Some(1.0 / 3.0),
            efficiency: Some(1.0 / 6.0),
            caveats: Vec::new(),
            contention: crate::lab::Contention {
                cpu_share_per_worker: vec![Some(1.0), Some(0.98)],
                cpu_share_mean: Some(0.99),
                baseline_cpu_share: None,
                load_start: Some(0.5),
                load_end: None,
                steal_share: None,
            },
            verified: Some(true),
            mismatch: None,
            checksum: "0123456789abcdef".into(),
            tolerance: None,
            ipc_messages: if queue { 7 } else { 2008 },
            ipc_bytes: 655,
            channel_result_bytes: 0,
            input_bytes: 0,
            param_bytes: 0,
            shm_bytes: 8_000_000,
            claims: if queue { 1000 } else { 0 },
            worker_sleeps: if queue { 3 } else { 0 },
            parent_sleeps: u64::from(queue),
            wake_messages: u64::from(queue),
            per_worker: vec![worker(0, 400), worker(1, 600)],
            restarts: 0,
            recycles: 0,
            retried_chunks: 0,
            deaths: Vec::new(),
            reduction: None,
            baseline_reduction: None,
            repeat: None,
            output: None,
            parent_peak_rss_bytes: None,
            advice: Vec::new(),
            warnings: Vec::new(),
            trace: None,
            #[cfg(feature = "mpi")]
            mpi: None,
        }
    }

    #[test]
    fn caveats_and_the_cpu_share_sit_under_the_speedup() {
        let mut r = report(Dispatch::Queue);
        r.caveats = vec!["the single-process time is estimated".into()];
        let text = render_text(&r);
        let lines: Vec<&str> = text.lines().collect();
        let at = |label: &str| lines.iter().position(|l| l.starts_with(label));
        let efficiency = at("  efficiency").expect("an efficiency line");
        assert_eq!(
            lines[efficiency + 1],
            "  caveat       the single-process time is estimated"
        );
        assert_eq!(
            lines[efficiency + 2],
            "  cpu share    workers 0.99 of a core each while computing; load 0.50"
        );
        // Nothing readable, no caveat: neither line.
        r.caveats.clear();
        r.contention.cpu_share_mean = None;
        r.contention.load_start = None;
        let text = render_text(&r);
        assert!(
            !text.contains("  caveat") && !text.contains("  cpu share"),
            "{text}"
        );
    }

    fn line<'a>(text: &'a str, label: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(&format!("  {label:<12} ")))
    }

    #[test]
    fn os_counters_are_shown_for_the_workers_and_the_baseline() {
        let mut r = report(Dispatch::Queue);
        assert!(!render_text(&r).contains("os counts"));
        for w in &mut r.per_worker {
            w.minor_faults = Some(9766 + w.id as u64);
            w.major_faults = Some(0);
            w.voluntary_switches = Some(3);
            w.involuntary_switches = Some(41);
        }
        r.baseline_os = Some(crate::lab::model::OsUsage {
            cpu_s: 0.02,
            minor_faults: 19_532,
            major_faults: 1,
            voluntary_switches: 0,
            involuntary_switches: 7,
        });
        let text = render_text(&r);
        assert!(text.contains(
            "\n  os counts    id  minor faults  major faults  voluntary switches  involuntary\n\
             \x20               0          9766             0                   3           41\n\
             \x20               1          9767             0                   3           41\n"
        ));
        assert!(text.contains(
            "\n               cpu 20.00 ms, faults 19532 minor + 1 major, context switches 0 \
             voluntary + 7 involuntary\n"
        ));
    }

    #[test]
    fn the_pool_line_says_how_workers_started_and_what_one_cost() {
        let mut r = report(Dispatch::Queue);
        assert_eq!(
            line(&render_text(&r), "pool"),
            Some(
                "  pool         12.00 ms  = start 6.00 ms (spawn, 3.00 ms a worker) + run 6.00 ms"
            )
        );
        r.start = Some(StartMethod::ForkServer);
        r.start_per_worker_s = None;
        assert_eq!(
            line(&render_text(&r), "pool"),
            Some("  pool         12.00 ms  = start 6.00 ms (forkserver) + run 6.00 ms")
        );
        // No pool (threads, single, MPI): nothing to say about it.
        r.start = None;
        assert_eq!(
            line(&render_text(&r), "pool"),
            Some("  pool         12.00 ms  = start 6.00 ms + run 6.00 ms")
        );
    }

    #[test]
    fn queue_dispatch_says_claims_not_messages() {
        let text = render_text(&report(Dispatch::Queue));
        assert_eq!(
            line(&text, "chunks"),
            Some(
                "  chunks       1000 × 1000 elements, dynamic schedule, claimed from the \
                 shared-memory queue, results through shared memory"
            )
        );
        assert_eq!(
            line(&text, "per chunk"),
            Some(
                "  per chunk    dispatch costs 84 ns a chunk (claim + bookkeeping), compute 8.0 µs"
            )
        );
        assert_eq!(
            line(&text, "queue"),
            Some(
                "  queue        1000 claims, 3 worker sleeps, 1 parent sleep, 1 wake message; \
                 7 messages on the control channel"
            )
        );
        assert!(text.contains("  per worker   id      pid  chunks  claims    compute"));
        assert!(text.contains("                1      101     600     600    4.00 ms"));
        // The per-worker table, claims column included, stays under 100 columns.
        let table = text
            .lines()
            .skip_while(|l| !l.starts_with("  per worker"))
            .take(3);
        for l in table {
            assert!(
                l.chars().count() < 100,
                "{} columns: {l}",
                l.chars().count()
            );
        }
    }

    #[test]
    fn channel_dispatch_keeps_the_messaging_words() {
        let text = render_text(&report(Dispatch::Channel));
        assert_eq!(
            line(&text, "chunks"),
            Some(
                "  chunks       1000 × 1000 elements, dynamic schedule, 9 in flight per worker, \
                 results through shared memory"
            )
        );
        assert_eq!(
            line(&text, "per chunk"),
            Some(
                "  per chunk    round trip 15.7 µs, compute 8.0 µs: messaging costs 7.7 µs a chunk"
            )
        );
        assert_eq!(line(&text, "queue"), None);
        assert!(text.contains("  per worker   id      pid  chunks    compute"));
    }
}
