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
//! Each rule fires on the measurement it names, never by elimination, and rules whose
//! causes overlap are exclusive: a busy machine or shared cores explain away the memory,
//! imbalance and chunk-length evidence they distort; a per-chunk cost explains away the
//! compute inflation that tiny chunks cause. [`caveats`] says, beside the speedup, where the
//! pool and the single process did not run under the same conditions.
//!
//! Every threshold is a named constant below, so the report and the README can cite them.

use serde::Serialize;

mod caveats;
mod rules;

pub(crate) use caveats::{Rounds, caveats};
use rules::*;

use crate::engine::protocol::Dispatch;
use crate::units::{count, num, percent, seconds_short, times};

/// StartDominated fires when starting the workers took more than this share of the pool's
/// wall time: the job is too short for processes to pay off.
pub(crate) const START_SHARE_MAX: f64 = 0.30;

/// IpcBound fires, with queue dispatch, when a chunk's mean compute is less than this many
/// times its mean dispatch cost (compute < 10 × claim and bookkeeping): the chunks are too
/// small even for the queue.
pub(crate) const IPC_MIN_COMPUTE_RATIO: f64 = 10.0;

/// With channel dispatch, IpcBound fires when a chunk's messaging (its round trip minus its
/// compute) costs more than this share of its compute, and suggests `--dispatch queue`,
/// which hands out chunks without a message each.
pub(crate) const CHANNEL_DISPATCH_MAX_SHARE: f64 = 0.10;

/// The compute-to-messaging ratio the suggested `--chunk-size` aims for: big enough that
/// IPC costs about 5 % of each chunk, with room below the [`IPC_MIN_COMPUTE_RATIO`] alarm.
pub(crate) const IPC_TARGET_COMPUTE_RATIO: f64 = 20.0;

/// A suggested chunk size never leaves a worker fewer than this many chunks, so a slow
/// worker can still be balanced by the others (Python's `Pool.map` aims for four too).
pub(crate) const MIN_CHUNKS_PER_WORKER: u64 = 4;

/// Imbalanced fires when the slowest worker's compute is above this multiple of the mean
/// (and the gap above [`IMBALANCE_MIN_WALL_SHARE`] of the wall time), whatever else the run
/// cost.
pub(crate) const IMBALANCE_MAX_OVER_MEAN: f64 = 1.5;

/// Imbalanced also fires, below [`IMBALANCE_MAX_OVER_MEAN`], when the gap (slowest minus
/// mean) exceeds this multiple of the run's other overheads per worker (starting, plus
/// dispatch summed over a worker's chunks): then the uneven split is the largest measured
/// cost (`--schedule static` on `primes`, whose later elements cost more, is the classic).
pub(crate) const IMBALANCE_OVER_OVERHEADS: f64 = 1.0;

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

/// The page the MemoryBound advice counts faults per (the x86-64 and arm64 base page).
pub(crate) const FAULT_PAGE_BYTES: f64 = 4096.0;

/// When the page faults were counted, MemoryBound also needs the workers to have taken at
/// least this many per 4 KiB page of results: with fewer (huge pages), faults do not set
/// the speed.
pub(crate) const MEMORY_MIN_FAULTS_PER_PAGE: f64 = 0.5;

/// The huge page `--huge-pages` is advised with when the kernel names none (x86-64's 2 MiB).
pub(crate) const DEFAULT_HUGE_PAGE_BYTES: u64 = 2 << 20;

/// ShortChunks fires when each chunk writes less than this (64 KiB, 16 pages of 4 KiB) and
/// the workers' summed compute is above [`MEMORY_COMPUTE_INFLATION`] times the single
/// process's: workers fault neighbouring pages of one shared region, and pay a claim for
/// every few pages. MemoryBound needs chunks at least this long, so the two never both fire.
pub(crate) const SHORT_CHUNK_BYTES: u64 = 64 << 10;

/// The output a chunk suggested by ShortChunks writes (1 MiB).
pub(crate) const SHORT_CHUNK_TARGET_BYTES: u64 = 1 << 20;

/// Contended fires when the workers got less than this share of a core each while they
/// worked (their CPU seconds over their computing and claiming seconds), with no more
/// workers than cores (with more, less than this share of `cores / workers`): other
/// processes used the CPUs.
pub(crate) const BUSY_CPU_SHARE: f64 = 0.8;

/// Contended names the hypervisor's steal time when it took at least this share of all
/// CPU time during the run.
pub(crate) const STEAL_WORTH_SAYING: f64 = 0.02;

/// A first measured round whose pool (or baseline) took more than this multiple of the
/// other rounds' median is called cold beside the speedup.
pub(crate) const COLD_ROUND_FACTOR: f64 = 2.0;

/// Efficiency above 100 % is explained by compute when the workers' summed compute is
/// below this share of the single process's time.
pub(crate) const SUPERLINEAR_COMPUTE_SHARE: f64 = 0.9;

/// IoBound fires for waiting workloads whose efficiency (speedup / workers) reaches this:
/// the speedup is close to the worker count, so adding workers pays off.
pub(crate) const IO_MIN_EFFICIENCY: f64 = 0.7;

/// LargeParams fires when the workload's encoded parameters exceed this (1 MiB; the
/// report's text shows them above it too).
pub(crate) use crate::lab::model::LARGE_PARAMS_BYTES;

/// At or above this efficiency a run with no other limit "scales"; below it, the advice
/// says plainly that no single measured limit explains the loss.
pub(crate) const SCALING_GOOD_EFFICIENCY: f64 = 0.8;

/// The most advices [`advise`] returns.
pub(crate) const MAX_ADVICE: usize = 2;

/// With more workers than cores, a speedup of at least this share of the cores' count
/// reached the ceiling the cores set: fewer workers would not be faster, and the advice
/// says so instead of suggesting `--workers` (8 workers of collatz on 2 cores got 1.85×,
/// and 2 workers 1.65×: the extra workers' finer chunks balanced the end better).
pub(crate) const OVERSUBSCRIBED_AT_CEILING: f64 = 0.85;

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
    /// Mean cost of handing out one chunk: with queue dispatch a worker's time between one
    /// chunk's kernel and the next (claim and bookkeeping), with channel dispatch the round
    /// trip minus the compute (the messages).
    pub dispatch_per_chunk_s: f64,
    /// How chunks reached the workers (`None` outside processes mode: nothing is sent).
    pub dispatch: Option<Dispatch>,
    /// Bytes of results written.
    pub output_bytes: u64,
    /// How chunks were handed out: `"static"`, `"dynamic"` or `"guided"`.
    pub schedule: String,
    /// True for workloads that wait rather than compute (`sleep`).
    pub io_bound_hint: bool,
    /// Minor page faults of all workers together during the job, when counted.
    pub pool_minor_faults: Option<u64>,
    /// Minor page faults of the single-process run, when counted.
    pub baseline_minor_faults: Option<u64>,
    /// Bytes of the workload's encoded parameters.
    pub param_bytes: u64,
    /// The workers' mean CPU share while they worked: CPU seconds over computing and
    /// claiming seconds (1.0 is a whole core each), when readable.
    pub cpu_share: Option<f64>,
    /// The workers' context switches during the job, summed: (voluntary, involuntary),
    /// when counted. Time off the CPU with more voluntary switches is the workers blocking,
    /// not other processes taking the CPU.
    pub switches: Option<(u64, u64)>,
    /// The single-process run's CPU seconds over its wall time, when measured.
    pub baseline_cpu_share: Option<f64>,
    /// The 1-minute load average at the run's start and end.
    pub load: (Option<f64>, Option<f64>),
    /// The share of the CPU time the hypervisor stole during the run.
    pub steal_share: Option<f64>,
    /// True when the pool's results lived in huge pages (`--huge-pages`); the
    /// single-process run never uses them.
    pub huge_pages: bool,
    /// The kernel's huge page size and how many are free now, when it has them.
    pub huge_page_bytes: Option<u64>,
    /// Reserved huge pages free now.
    pub huge_pages_free: Option<u64>,
    /// True when the single-process time was known without running it (`sleep`).
    pub baseline_estimated: bool,
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
    /// The workload's parameters are large: encoded on every job and decoded by every
    /// worker each time they change.
    LargeParams,
    /// Nothing measured limited the run.
    Scaling,
    /// Other processes used the CPUs: the workers got less than a core each.
    Contended,
    /// Chunks too short for their output: workers fault neighbouring pages of one shared
    /// region and claim a chunk every few pages, so each element costs more than alone.
    ShortChunks,
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
/// A busy machine ([`Limit::Contended`]) is said first: it distorts every other figure.
/// Limits that cost the run time (start-up, IPC, short chunks, shared cores, imbalance,
/// memory) come next, ordered by the share of the run each explains; the workload's nature
/// (I/O-bound) comes after them; [`Limit::Scaling`] is said only when nothing else applies.
/// Rules whose evidence another limit explains stay silent (see the module's docs).
pub(crate) fn advise(obs: &Observations) -> Vec<Advice> {
    let m = Measured::new(obs);
    let contended = contended(obs, &m);
    let oversubscribed = oversubscribed(obs, &m);
    // With more workers than cores, per-worker compute is wall time that includes waiting
    // for a core: its spread measures the scheduler's luck, not the work, so no imbalance.
    // Likewise a chunk's round trip (or a worker's time between chunks) then includes
    // waiting for a core, so it does not measure dispatch: no IPC verdict either.
    let ipc_bound = match (oversubscribed.is_some(), obs.dispatch) {
        (true, _) => None,
        (false, Some(Dispatch::Channel)) => channel_dispatch(obs, &m),
        (false, Some(Dispatch::Queue) | None) => ipc_bound(obs, &m),
    };
    // Compute inflated by waiting for a core (shared, or taken by other processes) says
    // nothing about chunks, memory or balance; inflated by a per-chunk cost, nothing about
    // the chunks' pages or memory.
    let disturbed = contended.is_some() || oversubscribed.is_some();
    let short_chunks = (!disturbed && ipc_bound.is_none())
        .then(|| short_chunks(obs, &m))
        .flatten();
    let imbalanced = (!disturbed).then(|| imbalanced(obs, &m)).flatten();
    let memory_bound = (!disturbed && ipc_bound.is_none() && short_chunks.is_none())
        .then(|| memory_bound(obs, &m))
        .flatten();
    let mut found: Vec<Candidate> = [
        start_dominated(obs, &m, ipc_bound.is_some()),
        contended,
        ipc_bound,
        short_chunks,
        oversubscribed,
        imbalanced,
        memory_bound,
        io_bound(obs, &m),
        large_params(obs),
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
    /// Other processes took the CPUs: said before anything else.
    Outside,
    /// A limit that cost the run time; ranked after [`Kind::Outside`].
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
            chunk_overhead: clean(obs.dispatch_per_chunk_s),
            compute: obs.compute_s.iter().copied().map(clean).collect(),
        }
    }

    /// Share of the pool's wall time spent starting workers.
    fn start_share(&self) -> f64 {
        share(self.spawn, self.pool)
    }

    /// The compute-to-dispatch ratio of one chunk (infinite when dispatch cost nothing).
    fn chunk_ratio(&self) -> f64 {
        if self.chunk_overhead > 0.0 {
            self.chunk_compute / self.chunk_overhead
        } else {
            f64::INFINITY
        }
    }
}

#[cfg(test)]
mod tests;
