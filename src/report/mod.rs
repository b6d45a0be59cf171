//! One [`Report`] per run, and its renderings: text for people, JSON for programs.

pub mod export;
pub mod plot;
pub mod sweep;
mod text;

use serde::Serialize;

use crate::baseline::Mismatch;
use crate::pool::{Death, StartMethod, WorkerStats};
use crate::run::Mode;

pub use text::render_text;

/// Everything a run measured. Field names carry their units (`_s` seconds, `_bytes`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Workload name.
    pub workload: String,
    /// The workload's parameters, as JSON.
    pub params: serde_json::Value,
    /// How the job ran: `processes`, `threads` or `single`.
    pub mode: Mode,
    /// How worker processes started (`spawn` or `fork`; null unless mode is `processes`).
    pub start: Option<StartMethod>,
    /// Number of elements computed.
    pub n: u64,
    /// Worker processes.
    pub workers: usize,
    /// Elements per chunk (the last chunk may be shorter).
    pub chunk_size: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Chunks in flight per worker.
    pub inflight: usize,
    /// Logical CPUs this process may use.
    pub cores_logical: usize,
    /// Physical cores, when known.
    pub cores_physical: Option<usize>,
    /// Wall time of the single-process run (`None` with `--no-baseline`).
    pub baseline_wall_s: Option<f64>,
    /// Wall time of the pool run, from the first worker start to the last result.
    pub pool_wall_s: f64,
    /// The part of `pool_wall_s` spent starting workers and their handshakes.
    pub spawn_s: f64,
    /// The part of `pool_wall_s` after the workers started: sending the job, the chunks,
    /// computing, and collecting the replies.
    pub run_s: f64,
    /// Kernel time summed over all workers.
    pub compute_s: f64,
    /// `baseline_wall_s / pool_wall_s`.
    pub speedup: Option<f64>,
    /// `speedup / workers`: 1.0 means every worker was as useful as the whole single process.
    pub efficiency: Option<f64>,
    /// True when every element of the pool output equals the single-process output.
    pub verified: Option<bool>,
    /// The first differing element, when `verified` is false.
    pub mismatch: Option<Mismatch>,
    /// Wrapping (mod 2^64) sum of the output elements, each widened to u64.
    pub checksum: u64,
    /// Messages that crossed the IPC channels, both ways (handshakes included).
    pub ipc_messages: u64,
    /// Bytes of those messages.
    pub ipc_bytes: u64,
    /// Bytes of results written through shared memory.
    pub shm_bytes: u64,
    /// What each worker did.
    pub per_worker: Vec<WorkerStats>,
    /// Workers restarted after dying or timing out.
    pub restarts: u64,
    /// Chunks handed out again because their worker died or timed out.
    pub retried_chunks: u64,
    /// Each worker death: which worker, its pid, how it ended, and its replacement.
    pub deaths: Vec<Death>,
    /// The workload's per-chunk reductions added up, if it has a reduction.
    pub reduction: Option<u64>,
    /// The same reduction of the single-process output (must equal `reduction`).
    pub baseline_reduction: Option<u64>,
    /// Things the user should know about this run (e.g. more workers than cores).
    pub warnings: Vec<String>,
}

impl Report {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }
}
