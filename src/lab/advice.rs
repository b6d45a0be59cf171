//! One or two sentences at the end of every report naming what limited the run.
//!
//! The Python tutorials teach a decision tree by rule of thumb: processes for CPU-bound work,
//! threads or async for I/O-bound work, batching when memory bounds you. This module takes
//! the same decisions from the run's own measurements instead: how long starting the workers
//! took, what one chunk's messaging cost against its compute, how many cores the workers
//! shared, how evenly they finished, and whether they slowed each other down. [`advise`]
//! turns an [`Observations`] into at most two [`Advice`]s, most important first, each a plain
//! sentence with the run's own numbers and one concrete thing to try; [`render`] prints them.
//!
//! Every threshold is a named constant below, so the report and the README can cite them.

use serde::Serialize;

use crate::units::{count, num, percent, seconds_short, times};

/// StartDominated fires when starting the workers took more than this share of the pool's
/// wall time: the job is too short for processes to pay off.
pub(crate) const START_SHARE_MAX: f64 = 0.30;

/// IpcBound fires when a chunk's mean compute is less than this many times its mean
/// messaging cost (compute < 10 × overhead).
pub(crate) const IPC_MIN_COMPUTE_RATIO: f64 = 10.0;

/// The compute-to-messaging ratio the suggested `--chunk-size` aims for: big enough that
/// IPC costs about 5 % of each chunk, with room below the [`IPC_MIN_COMPUTE_RATIO`] alarm.
pub(crate) const IPC_TARGET_COMPUTE_RATIO: f64 = 20.0;

/// A suggested chunk size never leaves a worker fewer than this many chunks, so a slow
/// worker can still be balanced by the others (Python's `Pool.map` aims for four too).
pub(crate) const MIN_CHUNKS_PER_WORKER: u64 = 4;

/// Imbalanced needs the slowest worker's compute above this multiple of the mean (and the
/// gap above [`IMBALANCE_MIN_WALL_SHARE`] of the wall time).
pub(crate) const IMBALANCE_MAX_OVER_MEAN: f64 = 1.5;

/// Imbalanced also needs the gap (slowest minus mean) above this share of the pool's wall
/// time, so a ragged end that cost little is not reported.
pub(crate) const IMBALANCE_MIN_WALL_SHARE: f64 = 0.10;

/// MemoryBound needs the workers' summed compute above this multiple of the single-process
/// wall time: the same work took much longer once spread over several processes. When
/// there are more workers than cores the sum is first scaled by cores / workers, so time
/// spent waiting for a core is not mistaken for waiting on memory.
pub(crate) const MEMORY_COMPUTE_INFLATION: f64 = 1.4;

/// MemoryBound also needs results written at more than this many bytes per second of
/// single-process time (1 GB/s): only then can page faults and bandwidth set the speed.
pub(crate) const MEMORY_MIN_OUTPUT_RATE: f64 = 1e9;

/// When the same job was measured on threads, MemoryBound also needs the threads to be no
/// faster than the processes: threads wall time at least this share of the pool's run time
/// (its wall time minus starting). Clearly faster threads point at processes' own costs,
/// not at memory.
pub(crate) const MEMORY_THREADS_NO_FASTER: f64 = 0.9;

/// IoBound fires for waiting workloads whose efficiency (speedup / workers) reaches this:
/// the speedup is close to the worker count, so adding workers pays off.
pub(crate) const IO_MIN_EFFICIENCY: f64 = 0.7;

/// At or above this efficiency a run with no other limit "scales"; below it, the advice
/// says plainly that no single measured limit explains the loss.
pub(crate) const SCALING_GOOD_EFFICIENCY: f64 = 0.8;

/// The most advices [`advise`] returns.
pub(crate) const MAX_ADVICE: usize = 2;

/// What a run measured, as the advice rules need it (all times in seconds).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Observations {
    /// Worker processes (or threads) the job ran on.
    pub workers: usize,
    /// Logical CPUs this process may use.
    pub cores_logical: usize,
    /// Elements computed.
    pub n: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Elements per chunk.
    pub chunk_size: u64,
    /// Wall time of the whole pool run, starting the workers included.
    pub pool_wall_s: f64,
    /// The part of `pool_wall_s` spent starting workers.
    pub spawn_s: f64,
    /// Wall time of the single-process run, when measured.
    pub baseline_wall_s: Option<f64>,
    /// Wall time of the same job on threads, when measured.
    pub threads_wall_s: Option<f64>,
    /// Kernel seconds per worker, indexed by worker id.
    pub compute_s: Vec<f64>,
    /// Mean kernel time of one chunk.
    pub mean_chunk_compute_s: f64,
    /// Mean per-chunk round trip minus its compute: the IPC cost of one chunk.
    pub mean_chunk_overhead_s: f64,
    /// Bytes of results written.
    pub output_bytes: u64,
    /// How chunks were handed out: `"static"`, `"dynamic"` or `"guided"`.
    pub schedule: String,
    /// True for workloads that wait rather than compute (`sleep`).
    pub io_bound_hint: bool,
}

/// What limited a run. Serialized in kebab-case (`"start-dominated"`, `"ipc-bound"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Limit {
    /// Starting the workers took a large share of the run.
    StartDominated,
    /// Each chunk's messaging cost is not small against its compute.
    IpcBound,
    /// More workers than cores on work that needs the cores.
    Oversubscribed,
    /// One worker computed for much longer than the others, who then idled.
    Imbalanced,
    /// The workers slowed each other down writing results: page faults and memory
    /// bandwidth, not the cores, set the speed.
    MemoryBound,
    /// The workers mostly wait, so more workers than cores still help.
    IoBound,
    /// Nothing measured limited the run.
    Scaling,
}

/// One piece of advice: what limited the run, and a sentence saying so with the run's own
/// numbers and a concrete suggestion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    /// What limited the run.
    pub limit: Limit,
    /// The sentence for the report.
    pub text: String,
}

/// The advice for a run, most important first (at most two entries; always at least one).
///
/// Limits that cost the run time (start-up, IPC, shared cores, imbalance, memory) come first,
/// ordered by the share of the run each explains; the workload's nature (I/O-bound) comes
/// after them; [`Limit::Scaling`] is said only when nothing else applies.
pub(crate) fn advise(obs: &Observations) -> Vec<Advice> {
    let m = Measured::new(obs);
    let oversubscribed = oversubscribed(obs, &m);
    // With more workers than cores, per-worker compute is wall time that includes waiting
    // for a core: its spread measures the scheduler's luck, not the work, so no imbalance.
    // Likewise a chunk's round trip then includes waiting for a core, so it does not
    // measure messaging: no IPC verdict either.
    let (imbalanced, ipc_bound) = if oversubscribed.is_some() {
        (None, None)
    } else {
        (imbalanced(obs, &m), ipc_bound(obs, &m))
    };
    let mut found: Vec<Candidate> = [
        start_dominated(&m),
        ipc_bound,
        oversubscribed,
        imbalanced,
        memory_bound(obs, &m),
        io_bound(obs, &m),
    ]
    .into_iter()
    .flatten()
    .collect();
    if found.is_empty() {
        found.push(scaling(obs, &m));
    }
    found.sort_by(|a, b| {
        a.kind
            .cmp(&b.kind)
            .then_with(|| b.weight.total_cmp(&a.weight))
    });
    found.truncate(MAX_ADVICE);
    found.into_iter().map(|c| c.advice).collect()
}

/// Whether an advice names something that cost time, or describes the run's nature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A limit that cost the run time; ranked first.
    Cost,
    /// What kind of job this is (I/O-bound, or scaling); ranked after every cost.
    Verdict,
}

/// An advice that fired, with what it explains (a share of the run, 0..=1) for ranking.
struct Candidate {
    kind: Kind,
    weight: f64,
    advice: Advice,
}

impl Candidate {
    fn new(kind: Kind, weight: f64, limit: Limit, text: String) -> Self {
        Candidate {
            kind,
            weight,
            advice: Advice { limit, text },
        }
    }
}

/// The observations with every time made finite and non-negative, and the ratios the rules
/// share computed once.
struct Measured {
    workers: usize,
    pool: f64,
    spawn: f64,
    /// `pool - spawn`: sending the job, computing, collecting.
    run: f64,
    baseline: Option<f64>,
    speedup: Option<f64>,
    efficiency: Option<f64>,
    chunk_compute: f64,
    chunk_overhead: f64,
    /// Per-worker compute, with unusable values as 0.
    compute: Vec<f64>,
}

impl Measured {
    fn new(obs: &Observations) -> Self {
        let workers = obs.workers.max(1);
        let pool = clean(obs.pool_wall_s);
        let spawn = clean(obs.spawn_s).min(pool);
        let baseline = obs.baseline_wall_s.map(clean).filter(|&b| b > 0.0);
        let speedup = baseline.filter(|_| pool > 0.0).map(|b| b / pool);
        Measured {
            workers,
            pool,
            spawn,
            run: pool - spawn,
            baseline,
            speedup,
            efficiency: speedup.map(|s| s / workers as f64),
            chunk_compute: clean(obs.mean_chunk_compute_s),
            chunk_overhead: clean(obs.mean_chunk_overhead_s),
            compute: obs.compute_s.iter().copied().map(clean).collect(),
        }
    }

    /// Share of the pool's wall time spent starting workers.
    fn start_share(&self) -> f64 {
        share(self.spawn, self.pool)
    }

    /// The compute-to-messaging ratio of one chunk (infinite when messaging cost nothing).
    fn chunk_ratio(&self) -> f64 {
        if self.chunk_overhead > 0.0 {
            self.chunk_compute / self.chunk_overhead
        } else {
            f64::INFINITY
        }
    }
}

fn start_dominated(m: &Measured) -> Option<Candidate> {
    let share = m.start_share();
    (share > START_SHARE_MAX).then(|| {
        Candidate::new(
            Kind::Cost,
            share,
            Limit::StartDominated,
            format!(
                "Starting {} took {} of the {} run: the job is too short for processes to \
                 pay off; give it more work (larger n) or reuse a Pool across jobs.",
                count(m.workers, "worker"),
                seconds_short(m.spawn),
                seconds_short(m.pool)
            ),
        )
    })
}

fn ipc_bound(obs: &Observations, m: &Measured) -> Option<Candidate> {
    let (compute, overhead) = (m.chunk_compute, m.chunk_overhead);
    if !(overhead > 0.0 && compute < IPC_MIN_COMPUTE_RATIO * overhead) {
        return None;
    }
    // The share of the running part that went to messaging, chunk by chunk.
    let weight = (1.0 - m.start_share()) * overhead / (overhead + compute);
    let current = obs.chunk_size.max(1);
    let suggested = suggested_chunk_size(current, compute, overhead, obs.n, m.workers);
    let head = format!(
        "Each chunk computed for {} but cost {} of messaging: IPC-bound.",
        seconds_short(compute),
        seconds_short(overhead)
    );
    let text = if suggested > current {
        format!("{head} Try --chunk-size {suggested}.")
    } else {
        format!(
            "{head} Chunks of {current} cannot grow while every worker keeps \
             {MIN_CHUNKS_PER_WORKER} of them; give each element more work or the job a \
             larger n."
        )
    };
    Some(Candidate::new(Kind::Cost, weight, Limit::IpcBound, text))
}

/// The chunk size that makes a chunk's compute about [`IPC_TARGET_COMPUTE_RATIO`] times its
/// messaging cost: `chunk_size × 20 × overhead / compute`, rounded, at least 1, and at most
/// `n / (4 × workers)` so every worker still gets [`MIN_CHUNKS_PER_WORKER`] chunks.
fn suggested_chunk_size(
    chunk_size: u64,
    compute: f64,
    overhead: f64,
    n: u64,
    workers: usize,
) -> u64 {
    let per_worker = MIN_CHUNKS_PER_WORKER.saturating_mul(workers.max(1) as u64);
    let cap = (n / per_worker).max(1);
    let wanted = chunk_size as f64 * IPC_TARGET_COMPUTE_RATIO * overhead / compute;
    // `as` saturates: an infinite or huge wish becomes u64::MAX, NaN becomes 0.
    let wanted = if wanted.is_nan() {
        chunk_size
    } else {
        wanted.round() as u64
    };
    wanted.max(1).min(cap)
}

fn oversubscribed(obs: &Observations, m: &Measured) -> Option<Candidate> {
    let cores = obs.cores_logical;
    if obs.io_bound_hint || cores == 0 || m.workers <= cores {
        return None;
    }
    let got = m
        .speedup
        .map(|s| format!(" (this run got {})", times(s)))
        .unwrap_or_default();
    Some(Candidate::new(
        Kind::Cost,
        1.0 - cores as f64 / m.workers as f64,
        Limit::Oversubscribed,
        format!(
            "{} share {}: at most {cores}× is possible{got}; use --workers {cores}.",
            count(m.workers, "worker"),
            count(cores, "core")
        ),
    ))
}

fn imbalanced(obs: &Observations, m: &Measured) -> Option<Candidate> {
    if m.compute.len() < 2 || m.pool <= 0.0 {
        return None;
    }
    let mean = m.compute.iter().sum::<f64>() / m.compute.len() as f64;
    let (slowest, max) = m
        .compute
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    let gap = max - mean;
    if !(mean > 0.0
        && max > IMBALANCE_MAX_OVER_MEAN * mean
        && gap > IMBALANCE_MIN_WALL_SHARE * m.pool)
    {
        return None;
    }
    let head = format!(
        "Worker {slowest} computed for {} against a mean of {}: on average a worker sat idle \
         {} of the {} run waiting for it.",
        seconds_short(max),
        seconds_short(mean),
        seconds_short(gap),
        seconds_short(m.pool)
    );
    let chunk = obs.chunk_size.max(1);
    let text = if obs.schedule == "static" {
        format!(
            "{head} The static schedule fixes each worker's share up front; try --schedule \
             dynamic."
        )
    } else if chunk > 1 {
        format!(
            "{head} Chunks of {chunk} are too coarse to even out; try --chunk-size {}.",
            chunk / 2
        )
    } else {
        format!("{head} Every chunk is already one element: the slowest elements set the end.")
    };
    Some(Candidate::new(
        Kind::Cost,
        share(gap, m.pool).min(1.0),
        Limit::Imbalanced,
        text,
    ))
}

fn memory_bound(obs: &Observations, m: &Measured) -> Option<Candidate> {
    let baseline = m.baseline?;
    let total: f64 = m.compute.iter().sum();
    // Kernel time is wall time: with more workers than cores, part of it is waiting for a
    // core. Count at most `cores` workers' worth of it as time spent computing.
    let cpu_total = if !obs.io_bound_hint && obs.cores_logical > 0 && m.workers > obs.cores_logical
    {
        total * obs.cores_logical as f64 / m.workers as f64
    } else {
        total
    };
    let rate = obs.output_bytes as f64 / baseline;
    let run = if m.run > 0.0 { m.run } else { m.pool };
    let threads = obs.threads_wall_s.map(clean);
    let threads_no_faster = threads.is_none_or(|t| t >= MEMORY_THREADS_NO_FASTER * run);
    if !(cpu_total > MEMORY_COMPUTE_INFLATION * baseline
        && rate > MEMORY_MIN_OUTPUT_RATE
        && threads_no_faster)
    {
        return None;
    }
    let threads = threads
        .map(|t| {
            format!(
                ", and threads took {}, no faster than processes",
                seconds_short(t)
            )
        })
        .unwrap_or_default();
    Some(Candidate::new(
        Kind::Cost,
        1.0 - baseline / cpu_total,
        Limit::MemoryBound,
        format!(
            "The {} computed for {} in total where one process needed {}, writing {} of \
             results{threads}: page faults and memory bandwidth set the speed, not the cores, \
             so more cores won't help; write less, or compute more per byte.",
            count(m.workers, "worker"),
            seconds_short(total),
            seconds_short(baseline),
            crate::units::rate(rate)
        ),
    ))
}

fn io_bound(obs: &Observations, m: &Measured) -> Option<Candidate> {
    if !obs.io_bound_hint || m.efficiency.is_some_and(|e| e < IO_MIN_EFFICIENCY) {
        return None;
    }
    let more = m.workers.saturating_mul(2);
    let measured = match (m.speedup, m.efficiency) {
        (Some(s), Some(e)) => format!(
            ": {} gave {} on {} (efficiency {}), so",
            count(m.workers, "worker"),
            times(s),
            count(obs.cores_logical.max(1), "core"),
            percent(e)
        ),
        _ => " rather than compute, so".to_string(),
    };
    Some(Candidate::new(
        Kind::Verdict,
        m.efficiency.unwrap_or(0.0),
        Limit::IoBound,
        format!(
            "The workers mostly wait{measured} more workers than cores help here (the \
             tutorials' threads-or-async case); try --workers {more}."
        ),
    ))
}

fn scaling(obs: &Observations, m: &Measured) -> Candidate {
    let mut facts = Vec::new();
    if m.pool > 0.0 {
        facts.push(format!(
            "starting took {} of the run",
            percent(m.start_share())
        ));
    }
    let ratio = m.chunk_ratio();
    if m.chunk_compute > 0.0 && ratio.is_finite() {
        facts.push(format!(
            "each chunk computed {}× its messaging cost",
            num(ratio)
        ));
    }
    let mean = m.compute.iter().sum::<f64>() / m.compute.len().max(1) as f64;
    let max = m.compute.iter().copied().fold(0.0, f64::max);
    if m.compute.len() > 1 && mean > 0.0 {
        facts.push(format!(
            "the slowest worker computed {} more than the mean",
            percent(max / mean - 1.0)
        ));
    }
    let facts = join_facts(&facts);
    let text = match m.efficiency {
        Some(e) if e >= SCALING_GOOD_EFFICIENCY => {
            let more = if obs.cores_logical > m.workers {
                format!(
                    "more workers would help: try --workers {}",
                    obs.cores_logical
                )
            } else {
                "more cores would help".to_string()
            };
            format!("Efficiency {}: the run scales; {more}.", percent(e))
        }
        Some(e) => format!(
            "Efficiency {} with no single limit standing out ({facts}); compare --mode \
             threads to see what processes cost here.",
            percent(e)
        ),
        None if facts.is_empty() => "No single-process baseline, so the speedup is unknown; \
                                     nothing measured limited the run."
            .to_string(),
        None => format!(
            "No single-process baseline, so the speedup is unknown; {facts}: nothing measured \
             limited the run."
        ),
    };
    Candidate::new(Kind::Verdict, 0.0, Limit::Scaling, text)
}

/// A time as a finite, non-negative number of seconds (anything else counts as 0).
fn clean(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

/// `part / whole`, or 0 when `whole` is not positive.
fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// `a`, `a and b`, `a, b and c`.
fn join_facts(facts: &[String]) -> String {
    match facts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU-bound run that scales: 2 workers on 2 cores, 95 % efficiency, cheap start,
    /// chunks 1250× their messaging cost, balanced, little output.
    fn healthy() -> Observations {
        Observations {
            workers: 2,
            cores_logical: 2,
            n: 1_000_000,
            chunks: 8,
            chunk_size: 125_000,
            pool_wall_s: 0.105,
            spawn_s: 0.005,
            baseline_wall_s: Some(0.2),
            threads_wall_s: Some(0.101),
            compute_s: vec![0.099, 0.1],
            mean_chunk_compute_s: 0.025,
            mean_chunk_overhead_s: 0.000_02,
            output_bytes: 8_000_000,
            schedule: "dynamic".to_string(),
            io_bound_hint: false,
        }
    }

    fn limits(obs: &Observations) -> Vec<Limit> {
        advise(obs).iter().map(|a| a.limit).collect()
    }

    fn fires(obs: &Observations, limit: Limit) -> bool {
        limits(obs).contains(&limit)
    }

    #[test]
    fn healthy_run_scales_and_fires_no_limit() {
        let advice = advise(&healthy());
        assert_eq!(advice.len(), 1);
        assert_eq!(advice[0].limit, Limit::Scaling);
        assert_eq!(
            advice[0].text,
            "Efficiency 95%: the run scales; more cores would help."
        );
        let m = Measured::new(&healthy());
        assert!(start_dominated(&m).is_none());
        assert!(ipc_bound(&healthy(), &m).is_none());
        assert!(oversubscribed(&healthy(), &m).is_none());
        assert!(imbalanced(&healthy(), &m).is_none());
        assert!(memory_bound(&healthy(), &m).is_none());
        assert!(io_bound(&healthy(), &m).is_none());
    }

    #[test]
    fn scaling_suggests_the_idle_cores() {
        let obs = Observations {
            cores_logical: 4,
            ..healthy()
        };
        assert_eq!(
            advise(&obs)[0].text,
            "Efficiency 95%: the run scales; more workers would help: try --workers 4."
        );
    }

    #[test]
    fn scaling_without_baseline_says_what_it_can() {
        let obs = Observations {
            baseline_wall_s: None,
            ..healthy()
        };
        let advice = advise(&obs);
        assert_eq!(advice.len(), 1);
        assert_eq!(advice[0].limit, Limit::Scaling);
        assert_eq!(
            advice[0].text,
            "No single-process baseline, so the speedup is unknown; starting took 5% of the \
             run, each chunk computed 1250× its messaging cost and the slowest worker computed \
             1% more than the mean: nothing measured limited the run."
        );
    }

    #[test]
    fn low_efficiency_with_no_limit_says_so() {
        let obs = Observations {
            baseline_wall_s: Some(0.12),
            ..healthy()
        };
        let advice = advise(&obs);
        assert_eq!(limits(&obs), [Limit::Scaling]);
        assert!(
            advice[0]
                .text
                .starts_with("Efficiency 57% with no single limit")
        );
        assert!(advice[0].text.contains("--mode threads"));
    }

    #[test]
    fn start_dominated_fires_on_a_short_job() {
        let obs = Observations {
            workers: 8,
            cores_logical: 8,
            pool_wall_s: 0.020,
            spawn_s: 0.012,
            baseline_wall_s: Some(0.03),
            compute_s: vec![0.001; 8],
            mean_chunk_compute_s: 0.000_25,
            mean_chunk_overhead_s: 0.000_01,
            threads_wall_s: None,
            ..healthy()
        };
        let advice = advise(&obs);
        assert_eq!(advice[0].limit, Limit::StartDominated);
        assert_eq!(
            advice[0].text,
            "Starting 8 workers took 12 ms of the 20 ms run: the job is too short for \
             processes to pay off; give it more work (larger n) or reuse a Pool across jobs."
        );
    }

    #[test]
    fn start_below_threshold_does_not_fire() {
        let obs = Observations {
            pool_wall_s: 0.1,
            spawn_s: 0.029,
            ..healthy()
        };
        assert!(!fires(&obs, Limit::StartDominated));
    }

    #[test]
    fn ipc_bound_fires_and_suggests_a_chunk_size() {
        let obs = Observations {
            workers: 8,
            cores_logical: 8,
            n: 10_000_000,
            chunks: 25_000,
            chunk_size: 400,
            pool_wall_s: 0.5,
            spawn_s: 0.01,
            baseline_wall_s: Some(0.1),
            threads_wall_s: None,
            compute_s: vec![0.01; 8],
            mean_chunk_compute_s: 3e-6,
            mean_chunk_overhead_s: 15e-6,
            ..healthy()
        };
        let advice = advise(&obs);
        assert_eq!(advice[0].limit, Limit::IpcBound);
        assert_eq!(
            advice[0].text,
            "Each chunk computed for 3 µs but cost 15 µs of messaging: IPC-bound. Try \
             --chunk-size 40000."
        );
    }

    #[test]
    fn ipc_bound_on_a_small_job_asks_for_more_work() {
        // Already 4 chunks per worker: chunks cannot grow.
        let obs = Observations {
            n: 8_000,
            chunk_size: 1_000,
            mean_chunk_compute_s: 1e-5,
            mean_chunk_overhead_s: 2e-5,
            ..healthy()
        };
        let advice = advise(&obs);
        assert_eq!(advice[0].limit, Limit::IpcBound);
        assert!(advice[0].text.contains("Chunks of 1000 cannot grow"));
        assert!(!advice[0].text.contains("--chunk-size"));
    }

    #[test]
    fn ipc_does_not_fire_when_compute_is_ten_times_messaging() {
        let obs = Observations {
            mean_chunk_compute_s: 1.5e-4,
            mean_chunk_overhead_s: 1e-5,
            ..healthy()
        };
        assert!(!fires(&obs, Limit::IpcBound));
        let obs = Observations {
            mean_chunk_compute_s: 0.9e-4,
            ..obs
        };
        assert!(fires(&obs, Limit::IpcBound));
    }

    #[test]
    fn suggested_chunk_size_arithmetic() {
        // 400 × 20 × 15 / 3 = 40 000, under the cap 10^7 / 32 = 312 500.
        assert_eq!(
            suggested_chunk_size(400, 3e-6, 15e-6, 10_000_000, 8),
            40_000
        );
        // Rounded: 7 × 20 × 1 / 3 = 46.67 → 47.
        assert_eq!(suggested_chunk_size(7, 3.0, 1.0, 1_000_000, 1), 47);
        // Capped so each of 8 workers keeps 4 chunks: 10^6 / 32 = 31 250.
        assert_eq!(
            suggested_chunk_size(10_000, 1e-6, 1e-5, 1_000_000, 8),
            31_250
        );
        // Never below 1, even when compute dwarfs messaging.
        assert_eq!(suggested_chunk_size(1, 1.0, 1e-9, 1_000_000, 2), 1);
        // The cap is at least 1 for tiny jobs.
        assert_eq!(suggested_chunk_size(1, 1e-6, 1e-5, 3, 8), 1);
        // No measurable compute: as large as the cap allows.
        assert_eq!(suggested_chunk_size(10, 0.0, 1e-5, 4_000, 2), 500);
        // Zero workers counts as one.
        assert_eq!(suggested_chunk_size(10, 1e-6, 1e-5, 4_000, 0), 1_000);
    }

    #[test]
    fn oversubscribed_fires_for_cpu_bound_work() {
        let obs = Observations {
            workers: 8,
            compute_s: vec![0.05; 8],
            ..healthy()
        };
        let advice = advise(&obs);
        assert_eq!(advice[0].limit, Limit::Oversubscribed);
        assert_eq!(
            advice[0].text,
            "8 workers share 2 cores: at most 2× is possible (this run got 1.90×); use \
             --workers 2."
        );
    }

    #[test]
    fn oversubscribed_readme_run() {
        // The README's squares run: 8 workers on 2 cores, 1.17×.
        let obs = Observations {
            workers: 8,
            cores_logical: 2,
            n: 10_000_000,
            chunks: 32,
            chunk_size: 312_500,
            pool_wall_s: 0.041_73,
            spawn_s: 0.006_95,
            baseline_wall_s: Some(0.048_90),
            threads_wall_s: None,
            compute_s: vec![
                0.005_56, 0.029_32, 0.023_16, 0.003_42, 0.027_28, 0.027_98, 0.022_91, 0.006_98,
            ],
            mean_chunk_compute_s: 0.004_58,
            mean_chunk_overhead_s: 0.000_05,
            output_bytes: 80_000_000,
            schedule: "dynamic".to_string(),
            io_bound_hint: false,
        };
        let advice = advise(&obs);
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(advice[0].limit, Limit::Oversubscribed);
        assert!(advice[0].text.contains("(this run got 1.17×)"));

        // Round trips that include waiting for a core are not messaging: no IPC verdict.
        let waited = Observations {
            mean_chunk_overhead_s: 0.003,
            mean_chunk_compute_s: 0.003,
            ..obs
        };
        let advice = advise(&waited);
        assert!(
            advice.iter().all(|a| a.limit != Limit::IpcBound),
            "{advice:?}"
        );
    }

    #[test]
    fn io_bound_run_is_never_called_oversubscribed() {
        let obs = Observations {
            workers: 16,
            cores_logical: 2,
            baseline_wall_s: Some(0.105 * 16.0 * 0.3),
            compute_s: vec![0.1; 16],
            io_bound_hint: true,
            ..healthy()
        };
        assert!(!fires(&obs, Limit::Oversubscribed));
        for efficiency in [0.1, 0.5, 0.95] {
            let obs = Observations {
                baseline_wall_s: Some(0.105 * 16.0 * efficiency),
                ..obs.clone()
            };
            assert!(!fires(&obs, Limit::Oversubscribed));
            let obs = Observations {
                baseline_wall_s: None,
                ..obs
            };
            assert!(!fires(&obs, Limit::Oversubscribed));
        }
    }

    #[test]
    fn io_bound_fires_when_speedup_is_near_workers() {
        let obs = Observations {
            workers: 8,
            cores_logical: 2,
            pool_wall_s: 1.0,
            spawn_s: 0.01,
            baseline_wall_s: Some(7.6),
            threads_wall_s: None,
            compute_s: vec![0.98; 8],
            mean_chunk_compute_s: 0.25,
            io_bound_hint: true,
            ..healthy()
        };
        let advice = advise(&obs);
        assert_eq!(advice.len(), 1);
        assert_eq!(advice[0].limit, Limit::IoBound);
        assert_eq!(
            advice[0].text,
            "The workers mostly wait: 8 workers gave 7.60× on 2 cores (efficiency 95%), so \
             more workers than cores help here (the tutorials' threads-or-async case); try \
             --workers 16."
        );
        // Far from 8×: not the I/O verdict.
        let slow = Observations {
            baseline_wall_s: Some(2.0),
            ..obs.clone()
        };
        assert!(!fires(&slow, Limit::IoBound));
        // Without a baseline the hint alone decides.
        let blind = Observations {
            baseline_wall_s: None,
            ..obs
        };
        assert_eq!(limits(&blind), [Limit::IoBound]);
        assert!(
            advise(&blind)[0]
                .text
                .starts_with("The workers mostly wait rather than compute, so")
        );
    }

    #[test]
    fn io_bound_comes_after_what_cost_time() {
        let obs = Observations {
            workers: 8,
            cores_logical: 2,
            pool_wall_s: 1.0,
            spawn_s: 0.01,
            baseline_wall_s: Some(7.6),
            threads_wall_s: None,
            compute_s: vec![0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.98],
            io_bound_hint: true,
            ..healthy()
        };
        assert_eq!(limits(&obs), [Limit::Imbalanced, Limit::IoBound]);
    }

    #[test]
    fn imbalanced_static_suggests_dynamic() {
        let obs = Observations {
            pool_wall_s: 0.2,
            baseline_wall_s: Some(0.2),
            compute_s: vec![0.05, 0.19],
            schedule: "static".to_string(),
            ..healthy()
        };
        let advice = advise(&obs);
        assert_eq!(advice[0].limit, Limit::Imbalanced);
        assert_eq!(
            advice[0].text,
            "Worker 1 computed for 190 ms against a mean of 120 ms: on average a worker sat \
             idle 70 ms of the 200 ms run waiting for it. The static schedule fixes each \
             worker's share up front; try --schedule dynamic."
        );
    }

    #[test]
    fn imbalanced_dynamic_suggests_smaller_chunks() {
        for schedule in ["dynamic", "guided"] {
            let obs = Observations {
                pool_wall_s: 0.2,
                baseline_wall_s: Some(0.2),
                compute_s: vec![0.19, 0.05],
                schedule: schedule.to_string(),
                ..healthy()
            };
            let advice = advise(&obs);
            assert_eq!(advice[0].limit, Limit::Imbalanced);
            assert!(advice[0].text.starts_with("Worker 0 computed for 190 ms"));
            assert!(
                advice[0].text.ends_with(
                    "Chunks of 125000 are too coarse to even out; try --chunk-size 62500."
                )
            );
        }
    }

    #[test]
    fn imbalance_that_costs_little_does_not_fire() {
        // 1.6× the mean, but the gap is 3 % of the wall time.
        let obs = Observations {
            pool_wall_s: 1.0,
            baseline_wall_s: Some(1.9),
            compute_s: vec![0.04, 0.08, 0.04, 0.04],
            workers: 4,
            cores_logical: 4,
            ..healthy()
        };
        assert!(!fires(&obs, Limit::Imbalanced));
        // A large gap but only 1.2× the mean.
        let obs = Observations {
            compute_s: vec![0.9, 1.1],
            workers: 2,
            cores_logical: 2,
            ..obs
        };
        assert!(!fires(&obs, Limit::Imbalanced));
    }

    /// Two processes writing 80 MB of squares: 1.6 GB/s, each slowed by the other.
    fn memory_heavy() -> Observations {
        Observations {
            workers: 2,
            cores_logical: 2,
            n: 10_000_000,
            chunks: 8,
            chunk_size: 1_250_000,
            pool_wall_s: 0.045,
            spawn_s: 0.002,
            baseline_wall_s: Some(0.049),
            threads_wall_s: Some(0.042),
            compute_s: vec![0.041, 0.042],
            mean_chunk_compute_s: 0.010,
            mean_chunk_overhead_s: 0.000_03,
            output_bytes: 80_000_000,
            schedule: "dynamic".to_string(),
            io_bound_hint: false,
        }
    }

    #[test]
    fn memory_bound_fires_when_workers_slow_each_other() {
        let advice = advise(&memory_heavy());
        assert_eq!(advice[0].limit, Limit::MemoryBound);
        assert_eq!(
            advice[0].text,
            "The 2 workers computed for 83 ms in total where one process needed 49 ms, \
             writing 1.6 GB/s of results, and threads took 42 ms, no faster than processes: \
             page faults and memory bandwidth set the speed, not the cores, so more cores won't help; write \
             less, or compute more per byte."
        );
        // Without a threads measurement the other two conditions decide.
        let obs = Observations {
            threads_wall_s: None,
            ..memory_heavy()
        };
        assert!(
            advise(&obs)[0]
                .text
                .contains("writing 1.6 GB/s of results: page faults")
        );
    }

    #[test]
    fn memory_bound_needs_every_condition() {
        // Threads clearly faster than processes: processes' own cost, not memory.
        let obs = Observations {
            threads_wall_s: Some(0.02),
            ..memory_heavy()
        };
        assert!(!fires(&obs, Limit::MemoryBound));
        // Little output: the slowdown is not memory's.
        let obs = Observations {
            output_bytes: 10_000_000,
            ..memory_heavy()
        };
        assert!(!fires(&obs, Limit::MemoryBound));
        // Summed compute close to the baseline: nobody slowed anybody down.
        let obs = Observations {
            compute_s: vec![0.03, 0.031],
            ..memory_heavy()
        };
        assert!(!fires(&obs, Limit::MemoryBound));
        // No baseline: nothing to compare with.
        let obs = Observations {
            baseline_wall_s: None,
            ..memory_heavy()
        };
        assert!(!fires(&obs, Limit::MemoryBound));
    }

    #[test]
    fn memory_bound_is_not_blamed_for_shared_cores() {
        // 8 workers on 2 cores: the summed kernel time is 4× inflated by waiting for a core.
        let obs = Observations {
            workers: 8,
            compute_s: vec![0.025; 8],
            threads_wall_s: None,
            ..memory_heavy()
        };
        assert_eq!(limits(&obs), [Limit::Oversubscribed]);
    }

    #[test]
    fn at_most_two_and_most_important_first() {
        // Start-up, IPC, shared cores and memory all fire here.
        let obs = Observations {
            workers: 4,
            cores_logical: 2,
            n: 10_000_000,
            chunk_size: 100,
            pool_wall_s: 0.1,
            spawn_s: 0.04,
            baseline_wall_s: Some(0.05),
            threads_wall_s: None,
            compute_s: vec![0.04; 4],
            mean_chunk_compute_s: 1e-6,
            mean_chunk_overhead_s: 4e-6,
            output_bytes: 200_000_000,
            schedule: "static".to_string(),
            io_bound_hint: false,
            chunks: 100_000,
        };
        let m = Measured::new(&obs);
        assert!(start_dominated(&m).is_some());
        assert!(ipc_bound(&obs, &m).is_some());
        assert!(oversubscribed(&obs, &m).is_some());
        assert!(memory_bound(&obs, &m).is_some());
        // Shared cores explain 1 - 2/4 = 50 %, start 40 %, memory 1 - 0.05 / (0.16 × 2/4) =
        // 37.5 %. IPC would explain 0.6 × 4/5 = 48 %, but with workers waiting for cores a
        // round trip is not messaging, so it is not said.
        assert_eq!(limits(&obs), [Limit::Oversubscribed, Limit::StartDominated]);
    }

    #[test]
    fn always_at_least_one_even_from_nothing() {
        let empty = Observations::default();
        let advice = advise(&empty);
        assert_eq!(advice.len(), 1);
        assert_eq!(advice[0].limit, Limit::Scaling);
        assert!(!advice[0].text.contains("NaN") && !advice[0].text.contains("inf"));

        let broken = Observations {
            pool_wall_s: f64::NAN,
            spawn_s: f64::INFINITY,
            baseline_wall_s: Some(-1.0),
            threads_wall_s: Some(f64::NAN),
            compute_s: vec![f64::NAN, 1.0],
            mean_chunk_compute_s: f64::NAN,
            mean_chunk_overhead_s: -1.0,
            ..healthy()
        };
        let advice = advise(&broken);
        assert!(!advice.is_empty() && advice.len() <= MAX_ADVICE);
        for a in &advice {
            assert!(
                !a.text.contains("NaN") && !a.text.contains("inf"),
                "{}",
                a.text
            );
        }
    }

    #[test]
    fn limits_serialize_in_kebab_case() {
        let a = Advice {
            limit: Limit::StartDominated,
            text: "t".to_string(),
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"limit":"start-dominated","text":"t"}"#
        );
        assert_eq!(
            serde_json::to_string(&Limit::IpcBound).unwrap(),
            r#""ipc-bound""#
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(seconds_short(3e-6), "3 µs");
        assert_eq!(seconds_short(0.006_9), "6.9 ms");
        assert_eq!(seconds_short(0.004_5), "4.5 ms");
        assert_eq!(seconds_short(0.012), "12 ms");
        assert_eq!(seconds_short(0.9999), "1 s");
        assert_eq!(seconds_short(1.26), "1.3 s");
        assert_eq!(seconds_short(4e-7), "400 ns");
        assert_eq!(seconds_short(0.0), "0 ns");
    }
}
