//! What a job measured: per job ([`JobStats`]) and per worker ([`WorkerStats`]).

use std::time::Duration;

use serde::Serialize;

use super::trace::Trace;
use crate::engine::protocol::{Dispatch, Transport};
use crate::engine::schedule::Schedule;

/// A worker that died during a job, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Death {
    /// The worker's id (its replacement has the same id).
    pub id: usize,
    /// The dead process's id.
    pub pid: u32,
    /// How it ended: "killed by SIGKILL", "exited with status 101", "timed out after 500ms".
    pub cause: String,
    /// The chunk it was running, if any.
    pub chunk: Option<u64>,
    /// The replacement's process id, if one was started.
    pub replaced_by: Option<u32>,
}

/// Messages and bytes that crossed the channels (postcard encoding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ipc {
    /// Messages, both ways.
    pub(crate) messages: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
}

impl Ipc {
    /// Counts one message of `bytes`.
    pub(crate) fn one(&mut self, bytes: u64) {
        self.messages += 1;
        self.bytes += bytes;
    }
}

impl std::ops::AddAssign for Ipc {
    fn add_assign(&mut self, other: Ipc) {
        self.messages += other.messages;
        self.bytes += other.bytes;
    }
}

/// What `--chunk-size auto` measured and chose.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AutoChunk {
    /// The chunk length chosen.
    pub chosen: u64,
    /// The length of the probe chunks it measured.
    pub probe_size: u64,
    /// Kernel time per element, measured on the probes.
    pub per_element_s: f64,
    /// Messaging cost of one chunk (round trip minus compute), measured on the probes.
    pub overhead_s: f64,
    /// Why, in words.
    pub reason: String,
}

/// What one worker did during a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The worker's id.
    pub id: usize,
    /// Its process id.
    pub pid: u32,
    /// Chunks it completed.
    pub chunks: u64,
    /// Seconds it spent in the kernel.
    pub compute_s: f64,
    /// CPU seconds (user + system) the process used during the job, if readable.
    pub cpu_s: Option<f64>,
    /// Peak resident memory of the process so far, in bytes, if readable.
    pub peak_rss_bytes: Option<u64>,
    /// Seconds it sat idle at the end of the job, done with its work while others finished.
    pub idle_end_s: f64,
    /// The CPU it is pinned to, with `--pin`.
    pub cpu: Option<usize>,
    /// Chunks it claimed from the shared-memory queue (queue dispatch).
    pub claims: u64,
    /// Seconds it spent between chunks: claiming and bookkeeping (queue dispatch).
    pub dispatch_s: f64,
    /// Times it slept on the queue's futex waiting for work (queue dispatch).
    pub sleeps: u64,
    /// Seconds its workload's [`Workload::setup`](crate::Workload::setup) took in this job
    /// (0 when it kept the set-up of an earlier job with an equal workload).
    pub setup_s: f64,
    /// Minor page faults during the job (`getrusage`'s `ru_minflt`: a page mapped without
    /// I/O, mostly the first write to each page of the output). Counted by the worker
    /// process itself with queue dispatch, by the parent from `/proc/PID/stat` at the job's
    /// start and end with channel dispatch, by the thread with `--mode threads`; `None`
    /// where unreadable.
    pub minor_faults: Option<u64>,
    /// Major page faults during the job (`ru_majflt`: a page read from disk); `None` as for
    /// `minor_faults`.
    pub major_faults: Option<u64>,
    /// Voluntary context switches during the job (`ru_nvcsw`: it blocked, on a futex or a
    /// read); `None` as for `minor_faults`.
    pub voluntary_switches: Option<u64>,
    /// Involuntary context switches during the job (`ru_nivcsw`: the scheduler gave its CPU
    /// to another task); `None` as for `minor_faults`.
    pub involuntary_switches: Option<u64>,
}

impl WorkerStats {
    /// Worker `id` (process `pid`) before it did anything: every count 0, every reading
    /// unknown. The in-process runs and the MPI backend fill in what they measure.
    pub(crate) fn idle(id: usize, pid: u32) -> WorkerStats {
        WorkerStats {
            id,
            pid,
            chunks: 0,
            compute_s: 0.0,
            cpu_s: None,
            peak_rss_bytes: None,
            idle_end_s: 0.0,
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

    /// Sets the four OS counters from one reading (`None`: all unknown).
    pub(crate) fn with_os(mut self, os: Option<crate::engine::sys::OsCounts>) -> WorkerStats {
        self.minor_faults = os.map(|o| o.minor_faults);
        self.major_faults = os.map(|o| o.major_faults);
        self.voluntary_switches = os.map(|o| o.voluntary_switches);
        self.involuntary_switches = os.map(|o| o.involuntary_switches);
        self
    }
}

/// Measurements of one job.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobStats {
    /// Elements computed.
    pub n: u64,
    /// Chunk length.
    pub chunk_size: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// From sending the job to the last chunk's reply.
    pub wall: Duration,
    /// Messages that crossed the channels, both ways (including the handshakes of workers
    /// started for this job).
    pub ipc_messages: u64,
    /// Bytes of those messages (postcard encoding).
    pub ipc_bytes: u64,
    /// Bytes of results written through shared memory.
    pub shm_bytes: u64,
    /// Bytes of the job's shared read-only inputs ([`crate::Input`]; each distinct input
    /// counted once): mapped by every worker, never copied into a message.
    pub input_bytes: u64,
    /// Bytes of the job's encoded parameters (the workload value, postcard): what a worker
    /// that does not hold the job's spec yet receives, [`crate::Param`] values included
    /// (each at its encoded size). Above 64 KiB they travel in one sealed memfd that
    /// every worker maps, not through each worker's channel. A plain field costs its
    /// encoding on every job, changed or not (1–2 ms per MiB): above 1 MiB,
    /// put read-only data in an [`crate::Input`] and other large values in a
    /// [`crate::Param`].
    pub param_bytes: u64,
    /// Messages that carried input descriptors to workers in this job (one per worker
    /// that did not hold all of the job's inputs yet; counted in `ipc_messages`). 0 when
    /// every worker already held them.
    pub input_sends: u64,
    /// Per worker.
    pub workers: Vec<WorkerStats>,
    /// Workers restarted after dying or timing out.
    pub restarts: u64,
    /// Worker processes replaced after reaching their recycling limit
    /// ([`PoolBuilder::max_chunks_per_worker`](crate::PoolBuilder::max_chunks_per_worker), [`PoolBuilder::max_worker_rss`](crate::PoolBuilder::max_worker_rss)).
    pub recycles: u64,
    /// Chunks handed out again because their worker died.
    pub retried_chunks: u64,
    /// Every worker death, in order.
    pub deaths: Vec<Death>,
    /// The job's reduction as JSON, when it reduced ([`Pool::reduce`](crate::Pool::reduce),
    /// [`Pool::run_and_reduce_with`](crate::Pool::run_and_reduce_with)): the chunks' accumulators combined in chunk order.
    pub reduction: Option<serde_json::Value>,
    /// Chunks in flight per worker at the end of the job: the depth chosen (see
    /// [`PoolBuilder::inflight_auto`](crate::PoolBuilder::inflight_auto)) or the fixed one.
    pub inflight: usize,
    /// How chunks were handed out.
    pub schedule: Schedule,
    /// How results came back.
    pub transport: Transport,
    /// What `--chunk-size auto` chose, and why.
    pub auto_chunk: Option<AutoChunk>,
    /// Mean time from a chunk starting at its worker to its `Done` arriving here.
    pub chunk_rtt_mean_s: f64,
    /// Mean kernel time of one chunk.
    pub chunk_compute_mean_s: f64,
    /// Bytes of results that crossed the channels (the channel transport).
    pub channel_result_bytes: u64,
    /// How chunks reached the workers.
    pub dispatch: Dispatch,
    /// Chunks claimed from the shared-memory queue, new and retried (queue dispatch).
    pub claims: u64,
    /// Times a worker slept on the queue's futex waiting for work (queue dispatch).
    pub worker_sleeps: u64,
    /// Times the dispatch loop slept waiting for the job (queue dispatch).
    pub parent_sleeps: u64,
    /// `Wake` messages workers sent the sleeping dispatch loop (queue dispatch).
    pub wake_messages: u64,
    /// Mean cost of handing out one chunk. Queue: the time a worker spends between one
    /// chunk's kernel and the next (claiming and bookkeeping). Channel: a chunk's round
    /// trip minus its compute.
    pub dispatch_per_chunk_s: f64,
    /// Chunks handed to the callback of [`Pool::for_each_chunk`](crate::Pool::for_each_chunk) (0 for other jobs).
    pub chunks_delivered: u64,
    /// The callback of [`Pool::for_each_chunk`](crate::Pool::for_each_chunk) returned `Break`: the job stopped before
    /// its end. `chunks` then counts the chunks that were done (`reduction` adds up only
    /// theirs), and the rest of the output is not computed.
    pub stopped_early: bool,
    /// The job's timeline, when [`JobOptions::trace`](crate::JobOptions::trace) asked for it.
    pub trace: Option<Trace>,
}

/// What a job's dispatcher, or an in-process run, counted: the part of [`JobStats`] that
/// depends on how chunks were handed out. What it does not count stays 0.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) n: u64,
    pub(crate) wall: Duration,
    pub(crate) workers: Vec<WorkerStats>,
    pub(crate) inflight: usize,
    pub(crate) chunk_size: u64,
    pub(crate) chunks: u64,
    pub(crate) schedule: Schedule,
    pub(crate) transport: Transport,
    pub(crate) dispatch: Dispatch,
    pub(crate) chunk_rtt_mean_s: f64,
    pub(crate) chunk_compute_mean_s: f64,
    pub(crate) dispatch_per_chunk_s: f64,
    pub(crate) channel_result_bytes: u64,
    pub(crate) claims: u64,
    pub(crate) worker_sleeps: u64,
    pub(crate) parent_sleeps: u64,
    pub(crate) wake_messages: u64,
}

/// What the supervisor kept of a pool's job: its traffic, its losses, and what the caller
/// asked for (nothing, for an in-process run).
#[derive(Debug, Default)]
pub(crate) struct Supervised {
    pub(crate) ipc: Ipc,
    pub(crate) input_bytes: u64,
    pub(crate) param_bytes: u64,
    pub(crate) input_sends: u64,
    pub(crate) shm_bytes: u64,
    pub(crate) restarts: u64,
    pub(crate) recycles: u64,
    pub(crate) retried_chunks: u64,
    pub(crate) deaths: Vec<Death>,
    pub(crate) auto_chunk: Option<AutoChunk>,
    pub(crate) chunks_delivered: u64,
    pub(crate) stopped_early: bool,
    pub(crate) trace: Option<Trace>,
}

impl JobStats {
    /// A job's measurements, from what its dispatcher counted and what its supervisor kept
    /// (the reduction is added by the caller that combines it).
    pub(crate) fn new(tally: Tally, kept: Supervised) -> JobStats {
        JobStats {
            n: tally.n,
            chunk_size: tally.chunk_size,
            chunks: tally.chunks,
            wall: tally.wall,
            ipc_messages: kept.ipc.messages,
            ipc_bytes: kept.ipc.bytes,
            shm_bytes: kept.shm_bytes,
            input_bytes: kept.input_bytes,
            input_sends: kept.input_sends,
            param_bytes: kept.param_bytes,
            workers: tally.workers,
            restarts: kept.restarts,
            recycles: kept.recycles,
            retried_chunks: kept.retried_chunks,
            deaths: kept.deaths,
            reduction: None,
            inflight: tally.inflight,
            schedule: tally.schedule,
            transport: tally.transport,
            auto_chunk: kept.auto_chunk,
            chunk_rtt_mean_s: tally.chunk_rtt_mean_s,
            chunk_compute_mean_s: tally.chunk_compute_mean_s,
            channel_result_bytes: tally.channel_result_bytes,
            dispatch: tally.dispatch,
            claims: tally.claims,
            worker_sleeps: tally.worker_sleeps,
            parent_sleeps: tally.parent_sleeps,
            wake_messages: tally.wake_messages,
            dispatch_per_chunk_s: tally.dispatch_per_chunk_s,
            chunks_delivered: kept.chunks_delivered,
            stopped_early: kept.stopped_early,
            trace: kept.trace,
        }
    }
}
