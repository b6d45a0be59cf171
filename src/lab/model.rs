//! The data a measured run produces: the [`Report`] and everything it holds. The lab fills
//! it in; [`crate::report`] only reads it (hyperfine keeps its result struct the same way).

use serde::Serialize;

// The engine's types a report holds, re-exported so that `report/` reads the lab's model
// only and never names the engine.
/// One chunk attempt of a trace, which the timeline's picture draws.
#[cfg(any(test, feature = "plot"))]
pub(crate) use crate::engine::pool::TraceAttempt;
pub(crate) use crate::engine::pool::{
    AutoChunk, Death, StartMethod, Trace, TraceEventKind, WorkerStats,
};
/// What a trace holds beyond its attempts, for the renderings' tests that build one.
#[cfg(test)]
pub(crate) use crate::engine::pool::{TraceEvent, TracePhase};
pub(crate) use crate::engine::protocol::{Dispatch, Transport};
pub(crate) use crate::engine::schedule::Schedule;
use crate::lab::advice::Advice;
use crate::lab::contention::Contention;
use crate::lab::measure::{Ratio, Summary};
use crate::lab::meta::{Meta, WorkersFrom};
use crate::workload::Tolerance;

/// Which way to run the job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Mode {
    /// Worker processes writing into shared memory: the pool.
    #[default]
    Processes,
    /// The same kernel on threads of this process, sharing one output buffer.
    Threads,
    /// One process, one call of the kernel over the whole range.
    Single,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Processes => "processes",
            Mode::Threads => "threads",
            Mode::Single => "single",
        })
    }
}

/// What the kernel counted for the single-process run's thread while it computed
/// (`getrusage(RUSAGE_THREAD)` deltas): the baseline's side of the per-worker counters in
/// [`WorkerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OsUsage {
    /// CPU seconds (user + system) the thread used.
    pub cpu_s: f64,
    /// Minor page faults (mostly the first write to each page of the output).
    pub minor_faults: u64,
    /// Major page faults (pages read from disk).
    pub major_faults: u64,
    /// Voluntary context switches (the thread blocked).
    pub voluntary_switches: u64,
    /// Involuntary context switches (the scheduler gave its CPU to another task).
    pub involuntary_switches: u64,
}

impl OsUsage {
    pub(crate) fn new(cpu_s: f64, os: crate::engine::sys::OsCounts) -> OsUsage {
        OsUsage {
            cpu_s,
            minor_faults: os.minor_faults,
            major_faults: os.major_faults,
            voluntary_switches: os.voluntary_switches,
            involuntary_switches: os.involuntary_switches,
        }
    }
}

/// Timings over repeated rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repeats {
    /// Measured rounds.
    pub runs: usize,
    /// Rounds discarded first.
    pub warmup: usize,
    /// The single-process run's wall time over the rounds.
    pub baseline_s: Option<Summary>,
    /// The parallel run's wall time over the rounds (starting included).
    pub pool_s: Summary,
    /// `baseline / pool` with its spread (hyperfine's method).
    pub speedup: Option<Ratio>,
}

/// Where a streamed run's output went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputReport {
    /// The file.
    pub path: String,
    /// Bytes written: n × the element size.
    pub bytes: u64,
    /// Windows written.
    pub windows: u64,
    /// Bytes per window.
    pub window_bytes: u64,
    /// Seconds spent writing, on the writer thread (overlapping the workers).
    pub write_s: f64,
}

/// Encoded parameters above this (1 MiB) are large: a plain field costs its encoding on
/// every job (1–2 ms per MiB) and its decoding in every worker whenever it
/// changes. The report shows them, and its advice says `large-params`.
pub(crate) const LARGE_PARAMS_BYTES: u64 = 1 << 20;

/// Everything a run measured. Field names carry their units (`_s` seconds, `_bytes`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The schema and procpool versions, the start time and the machine (flattened: its
    /// keys are the document's first keys).
    #[serde(flatten)]
    pub meta: Meta,
    /// Workload name.
    pub workload: String,
    /// The workload's parameters, as JSON.
    pub params: serde_json::Value,
    /// How the job ran: `processes`, `threads` or `single`.
    pub mode: Mode,
    /// How worker processes started, the method the pool actually used (`forkserver`,
    /// `spawn` or `fork`; a fork server falls back to `spawn` where the program has none);
    /// null unless mode is `processes`.
    pub start: Option<StartMethod>,
    /// How chunks were handed out: `static`, `dynamic` or `guided`.
    pub schedule: Schedule,
    /// How results came back: `shm` or `channel` (null unless mode is `processes`).
    pub transport: Option<Transport>,
    /// How chunks reached the workers: `queue` (claimed from shared memory, no message per
    /// chunk) or `channel` (a message out and a `Done` back per chunk); null unless mode is
    /// `processes`.
    pub dispatch: Option<Dispatch>,
    /// Whether each worker was pinned to one CPU.
    pub pinned: bool,
    /// Number of elements computed.
    pub n: u64,
    /// Worker processes.
    pub workers: usize,
    /// Where `workers` came from: `given`, `env` (`PROCPOOL_WORKERS`) or `cpus` (one per
    /// effective CPU).
    pub workers_from: WorkersFrom,
    /// Elements per chunk (the last chunk may be shorter).
    pub chunk_size: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// What `--chunk-size auto` measured and chose, and why.
    pub auto_chunk: Option<AutoChunk>,
    /// Chunks in flight per worker (channel dispatch; 1 with queue dispatch, where workers
    /// claim one chunk at a time and nothing is in flight).
    pub inflight: usize,
    /// Logical CPUs this process may use.
    pub cores_logical: usize,
    /// Physical cores, when known.
    pub cores_physical: Option<usize>,
    /// Wall time of the single-process run (`None` with `--no-baseline`).
    pub baseline_wall_s: Option<f64>,
    /// True when `baseline_wall_s` was known without running it (`sleep`: n × ms); the output
    /// was still checked against the expected values.
    pub baseline_estimated: bool,
    /// What the kernel counted for the single-process run of the last round (CPU time, page
    /// faults, context switches); `None` without a measured baseline.
    pub baseline_os: Option<OsUsage>,
    /// Wall time of the pool run, from the first worker start to the last result.
    pub pool_wall_s: f64,
    /// The part of `pool_wall_s` spent starting workers and their handshakes.
    pub spawn_s: f64,
    /// What starting one worker cost: `spawn_s` over the workers started in it, those the
    /// pool waited for before the job (with `spawn`, as many as there are CPUs; the others
    /// start while the job runs). Null unless `start` is set.
    pub start_per_worker_s: Option<f64>,
    /// The part of `pool_wall_s` after the workers started: sending the job, the chunks,
    /// computing, and collecting the replies.
    pub run_s: f64,
    /// Kernel time summed over all workers.
    pub compute_s: f64,
    /// Kernel time of the busiest worker.
    pub compute_max_s: f64,
    /// Where the pool's wall time went (last round).
    pub breakdown: Breakdown,
    /// Mean time from a chunk starting at its worker to its reply arriving (queue dispatch,
    /// where nothing replies: its compute plus `dispatch_per_chunk_s`).
    pub chunk_rtt_mean_s: f64,
    /// Mean kernel time of one chunk, to compare with `chunk_rtt_mean_s`.
    pub chunk_compute_mean_s: f64,
    /// Mean cost of handing out one chunk. Queue dispatch: the time a worker spends between
    /// one chunk's kernel and the next (claiming and bookkeeping). Channel dispatch: a
    /// chunk's round trip minus its compute (the messages).
    pub dispatch_per_chunk_s: f64,
    /// `baseline_wall_s / pool_wall_s`.
    pub speedup: Option<f64>,
    /// `speedup / workers`: 1.0 means every worker was as useful as the whole single process.
    pub efficiency: Option<f64>,
    /// Where the pool and the single process did not run under the same conditions (huge
    /// pages on one side, an estimated baseline, a cold first round, a busy machine), and
    /// why an efficiency above 100 % happened: sentences the report shows beside the
    /// speedup. Empty when the two ran alike.
    pub caveats: Vec<String>,
    /// What other processes took from the run: the workers' and the single process's CPU
    /// share, the load average and the steal time.
    pub contention: Contention,
    /// True when every element of the pool output equals the single-process output.
    pub verified: Option<bool>,
    /// The first differing element, when `verified` is false.
    pub mismatch: Option<Mismatch>,
    /// The tolerance the workload declared for its floating-point output
    /// ([`Workload::tolerance`](crate::Workload::tolerance)); `None` when outputs must be
    /// identical bytes.
    pub tolerance: Option<Tolerance>,
    /// The first 16 hex digits of the SHA-256 of the output's bytes: the elements in index
    /// order, as they lie in memory (little-endian), so equal outputs have equal checksums
    /// whatever the element type, the worker count or the mode.
    pub checksum: String,
    /// Messages that crossed the IPC channels, both ways (handshakes included).
    pub ipc_messages: u64,
    /// Bytes of those messages.
    pub ipc_bytes: u64,
    /// Bytes of results that crossed the channels (`--transport channel`), included in
    /// `ipc_bytes`.
    pub channel_result_bytes: u64,
    /// Bytes of results written through shared memory.
    pub shm_bytes: u64,
    /// Bytes of the workload's shared read-only inputs ([`crate::Input`]),
    /// each distinct input once: one sealed memfd every worker maps, never copied into a
    /// message (0: none).
    pub input_bytes: u64,
    /// Bytes of the workload's encoded parameters (postcard; `Input` fields as an index,
    /// `Param` fields at their encoded size): what each worker is sent when they change.
    /// Above 1 MiB the advice suggests an `Input` or a `Param`.
    pub param_bytes: u64,
    /// Chunks claimed from the shared-memory queue, retries included (queue dispatch).
    pub claims: u64,
    /// Times a worker slept on the queue's futex waiting for work (queue dispatch).
    pub worker_sleeps: u64,
    /// Times the parent's dispatch loop slept waiting for the job (queue dispatch).
    pub parent_sleeps: u64,
    /// `Wake` messages workers sent the sleeping parent (queue dispatch).
    pub wake_messages: u64,
    /// What each worker did.
    pub per_worker: Vec<WorkerStats>,
    /// Workers restarted after dying or timing out.
    pub restarts: u64,
    /// Worker processes replaced after their recycling limit (not deaths).
    pub recycles: u64,
    /// Chunks handed out again because their worker died or timed out.
    pub retried_chunks: u64,
    /// Each worker death: which worker, its pid, how it ended, and its replacement.
    pub deaths: Vec<Death>,
    /// The job's reduction, when it reduced ([`crate::run_reduce`]; the command reduces
    /// `squares` to the sum of its output and `primes` to the count of primes): the
    /// chunks' accumulators combined in chunk order, as JSON.
    pub reduction: Option<serde_json::Value>,
    /// The single-process output reduced over the same chunks in the same order (equal to
    /// `reduction` bit for bit in a verified run).
    pub baseline_reduction: Option<serde_json::Value>,
    /// Timings over repeated rounds (`--repeat`), when more than one.
    pub repeat: Option<Repeats>,
    /// Where the output was streamed (`--output`), if it was.
    pub output: Option<OutputReport>,
    /// Peak resident memory of procpool's own process (the workers' are in `per_worker`).
    pub parent_peak_rss_bytes: Option<u64>,
    /// What limited the run, in plain words, from its own measurements.
    pub advice: Vec<Advice>,
    /// Things the user should know about this run (e.g. more workers than cores).
    pub warnings: Vec<String>,
    /// The last round's timeline, when [`crate::JobOptions::trace`] asked for it (processes
    /// mode). Not part of the JSON report: `procpool --trace FILE.json` writes it as a
    /// Chrome trace of its own.
    #[serde(skip)]
    pub trace: Option<Trace>,
    /// The MPI backend's ranks, nodes and bytes (`--backend mpi`); absent from other runs'
    /// JSON.
    #[cfg(feature = "mpi")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mpi: Option<MpiReport>,
}

/// Where the pool's wall time went. `spawn_s + compute_s + ipc_wait_s + imbalance_idle_s`
/// equals `total_s`: each worker's share of the run is split into computing, waiting between
/// chunks (messages, dispatch, mapping), and sitting idle at the end while the slowest
/// finished; the means over workers are shown.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Breakdown {
    /// The pool run's wall time, starting included.
    pub total_s: f64,
    /// Starting the workers (spawn or fork, and the handshakes).
    pub spawn_s: f64,
    /// Computing, per worker (mean).
    pub compute_s: f64,
    /// Waiting on IPC and dispatch between chunks, per worker (mean).
    pub ipc_wait_s: f64,
    /// Idle at the end from imbalance, per worker (mean).
    pub imbalance_idle_s: f64,
    /// Comparing the outputs afterwards (not part of `total_s`).
    pub verify_s: f64,
}

impl Breakdown {
    /// Splits a run of `total_s` (of which `spawn_s` starting) over its `workers`.
    pub fn new(total_s: f64, spawn_s: f64, workers: &[WorkerStats], verify_s: f64) -> Self {
        let run = (total_s - spawn_s).max(0.0);
        let count = workers.len().max(1) as f64;
        let (mut compute, mut wait, mut idle) = (0.0, 0.0, 0.0);
        for w in workers {
            let c = w.compute_s.min(run);
            let i = w.idle_end_s.min(run - c);
            compute += c;
            idle += i;
            wait += (run - c - i).max(0.0);
        }
        Breakdown {
            total_s,
            spawn_s,
            compute_s: compute / count,
            ipc_wait_s: wait / count,
            imbalance_idle_s: idle / count,
            verify_s,
        }
    }
}

impl Report {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }
}

/// What a run on the MPI backend adds to its [`Report`] (the JSON's `mpi` object; feature
/// `mpi`, see `procpool::mpi`).
#[cfg(feature = "mpi")]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MpiReport {
    /// Always `mpi`.
    pub backend: String,
    /// Ranks in `MPI_COMM_WORLD`: rank 0 and the workers.
    pub ranks: usize,
    /// Nodes (groups of ranks that share memory, or of `node_size` ranks).
    pub nodes: usize,
    /// Ranks on each node, rank 0's node first.
    pub ranks_per_node: Vec<usize>,
    /// Each rank's host (`MPI_Get_processor_name`), by rank.
    pub hosts: Vec<String>,
    /// Bytes of the shared window on rank 0's node.
    pub window_bytes: u64,
    /// Result bytes workers on rank 0's node wrote into the shared window (last round).
    pub shm_result_bytes: u64,
    /// Result bytes that crossed nodes (last round), by `route`.
    pub cross_node_bytes: u64,
    /// How results cross nodes: `put` (`MPI_Put` into rank 0's window) or `send` (in each
    /// chunk's `Done` message, copied into the window by rank 0).
    pub route: String,
    /// Seconds from `mpirun`'s start to rank 0 handing out the first chunk (`null` when
    /// rank 0's parent is not Open MPI's launcher); clock-tick resolution, 10 ms.
    pub launch_s: Option<f64>,
    /// How ranks wait for messages.
    pub wait: String,
    /// Open MPI files that killed jobs had left in /dev/shm, removed before this run
    /// (files of this user, older than 5 s, that no process maps).
    pub stale_shm_files_removed: u64,
    /// Open MPI settings procpool put in the environment before `MPI_Init`, because the
    /// environment did not set them (`OMPI_MCA_pml=ob1`, …).
    pub mca_set: Vec<String>,
    /// The MPI library's version string.
    pub library: String,
}

/// The first place where two outputs differ (beyond the workload's tolerance, if it has
/// one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mismatch {
    /// Index of the first differing element.
    pub index: u64,
    /// The pool's element there, as `Debug` shows it.
    pub pool: String,
    /// The single-process element there, as `Debug` shows it.
    pub baseline: String,
    /// With a [`Tolerance`]: the first float lane of the element beyond it (0 for the first
    /// lane).
    pub lane: Option<usize>,
    /// With a [`Tolerance`]: that lane's `pool − baseline` (`None` when a NaN is
    /// involved).
    pub difference: Option<f64>,
    /// With a [`Tolerance`]: how many representable values apart that lane's two values
    /// are (`None` when a NaN is involved).
    pub ulps: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(compute_s: f64, idle_end_s: f64) -> WorkerStats {
        WorkerStats {
            id: 0,
            pid: 1,
            chunks: 1,
            compute_s,
            cpu_s: None,
            peak_rss_bytes: None,
            idle_end_s,
            cpu: None,
            claims: 0,
            dispatch_s: 0.0,
            sleeps: 0,
            setup_s: 0.0,
            minor_faults: None,
            major_faults: None,
            voluntary_switches: None,
            involuntary_switches: None,
        }
    }

    #[test]
    fn breakdown_parts_add_up_to_the_whole() {
        let workers = [worker(0.6, 0.1), worker(0.3, 0.4), worker(0.7, 0.0)];
        let b = Breakdown::new(1.0, 0.2, &workers, 0.05);
        let sum = b.spawn_s + b.compute_s + b.ipc_wait_s + b.imbalance_idle_s;
        assert!((sum - b.total_s).abs() < 1e-12, "{b:?}");
        assert!((b.compute_s - 1.6 / 3.0).abs() < 1e-12);
        assert!((b.imbalance_idle_s - 0.5 / 3.0).abs() < 1e-12);
        // Measurements that overshoot the run are clamped, so the parts still add up.
        let b = Breakdown::new(1.0, 0.5, &[worker(0.9, 0.9)], 0.0);
        let sum = b.spawn_s + b.compute_s + b.ipc_wait_s + b.imbalance_idle_s;
        assert!((sum - 1.0).abs() < 1e-12, "{b:?}");
    }
}
