//! The pool: worker processes, their channels, and the shared region they write into.
//!
//! [`PoolBuilder::build`] (`options.rs`) starts the workers (`spawn.rs`, `workers.rs`);
//! [`Pool::run`] sends a job and hands out its chunks (the shared-memory queue in
//! `queue.rs`, or per-chunk messages in `dispatch.rs`); a job stopped early by a panic, a
//! cancel or a deadline keeps the workers (`quiesce.rs`); dropping the pool stops and reaps
//! every worker.

mod auto_chunk;
mod claims;
mod closures;
mod dispatch;
mod each;
mod ledger;
mod observe;
mod options;
mod private_dir;
mod queue;
mod quiesce;
mod spawn;
mod spec;
mod stats;
mod supervise;
mod trace;
mod watchdog;
mod window;
mod workers;

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{IpcReceiverSet, IpcSender};

use crate::engine::control::Control;
use crate::engine::limits::{Machine, check_memory};
use crate::engine::protocol::ToWorker;
use crate::engine::protocol::{
    Dispatch, InputRef, JobSpec, Layout, Registered, SEALED_PARAMS_BYTES, Transport,
};
use crate::engine::schedule::{Dispenser, Schedule};
use crate::engine::sealed::{MAX_INPUTS, Sealed};
use crate::engine::shm::{Mapping, SharedRegion};
use crate::error::{Error, Result};
use crate::workload::{Element, Reduce, Workload};
pub use each::{Chunk, ChunkOrder};
use each::{Each, RawVisit};
pub use observe::{Event, Observer};
pub(crate) use options::TEST_SUPPORT;
pub use options::{JobOptions, PoolBuilder, PoolOptions, StartMethod, Supervision};
use options::{check_chunk_size, huge_refusal};
pub(crate) use options::{
    check_counts, check_deadline, check_dispatch, huge_pages_for, max_inflight,
};
use private_dir::PrivateDir;
#[cfg(feature = "mpi")]
pub(crate) use private_dir::sweep_abandoned;
pub(crate) use spawn::TEST_WORKER_ENV;
pub use stats::{AutoChunk, Death, JobStats, WorkerStats};
pub(crate) use stats::{Ipc, Supervised, Tally};
use supervise::JobCore;
pub use trace::{Trace, TraceAttempt, TraceEvent, TraceEventKind, TracePhase};
pub use window::WindowSink;
use workers::WorkerSlot;

/// A set of worker processes sharing one memory region, ready to run jobs.
///
/// Workers die with the pool, and with this process however it ends. Linux's
/// `PR_SET_PDEATHSIG` follows the *thread* that started a worker, not the process, so the
/// pool spawns its workers from a thread of its own that lives exactly as long as the pool:
/// a pool may be built on one thread and used, or dropped, on another. (Workers started
/// with [`StartMethod::Fork`] belong to the thread that built the pool, which must be the
/// process's only thread then; their replacements are spawned from the pool's thread.)
///
/// Each worker leads a process group of its own; when a worker ends, for whatever reason,
/// its whole group is killed, so processes a kernel started end with it (see
/// [`Workload::kernel`]). A kernel's process that leaves the group is not waited for. A
/// worker's death is seen from the process itself, even while a process it forked keeps
/// its channel open; and no wait of the pool's (a start, a worker's last output lines, a
/// shutdown) lasts longer than its deadline.
///
/// # When workers are replaced
///
/// Jobs run on the same worker processes, which keep their workload's
/// [`setup`](Workload::setup) while the workload value stays the same. A worker process is
/// replaced (a fresh process under the same id) when it dies, during a job or between jobs;
/// when its chunk runs past [`Supervision::chunk_timeout`]; when its kernel panics and
/// [`Supervision::retry_panics`] is set; when it reaches its recycling limit
/// ([`PoolBuilder::max_chunks_per_worker`], [`PoolBuilder::max_worker_rss`]); when the
/// queue's watchdog finds it stopped; and when it is still in a stopped job's chunk
/// [`Supervision::grace`] after the next job began (below).
///
/// Every worker is stopped, and the next job starts a fresh set, after a job that failed by
/// an interrupt ([`Interrupt`](crate::Interrupt)), by workers lost beyond the limits
/// ([`Error::ChunkFailed`], [`Error::TooManyRestarts`]), by a damaged queue
/// ([`Error::QueueDamaged`]), by a worker that cannot run the job, by results that do not
/// add up, or by a panic in a [`Pool::for_each_chunk`] callback.
///
/// Workers are **kept** after [`Error::KernelPanicked`] (the worker caught the panic),
/// [`Error::Cancelled`] ([`JobOptions::cancel`]) and [`Error::DeadlineExceeded`]
/// ([`JobOptions::deadline`]). Such a job returns its error at once, within about one
/// chunk's time of the stop; no worker starts another chunk of it, and a chunk still running
/// finishes. The next job (not the caller of the stopped one) waits for those chunks before
/// anything of it is written, drops the stopped job's replies, and runs on the same
/// processes; a worker still in its chunk `grace` after the next job began is killed and
/// replaced, as a death between jobs.
///
/// ```no_run
/// use procpool::Pool;
/// use procpool::workload::Squares;
///
/// procpool::init(); // first thing in main: a re-executed worker serves here and exits
/// let mut pool = Pool::builder().workers(2).build()?;
/// let run = pool.run(&Squares, 1000)?;
/// assert_eq!(run.results()[12], 144);
/// # Ok::<(), procpool::Error>(())
/// ```
///
/// # Sharing a pool between threads
///
/// A `Pool` is `Send` (build it on one thread, use or drop it on another) but not `Sync`:
/// a job needs `&mut Pool`, since its workers run one job at a time. To share one pool,
/// put it in a `Mutex`; each thread's job then waits for the one before it:
///
/// ```no_run
/// use std::sync::{Arc, Mutex};
/// use procpool::Pool;
///
/// procpool::init();
/// let pool = Arc::new(Mutex::new(Pool::builder().workers(2).build()?));
/// let handles: Vec<_> = (0..4u64)
///     .map(|t| {
///         let pool = Arc::clone(&pool);
///         std::thread::spawn(move || {
///             let mut pool = pool.lock().unwrap();
///             pool.map_range(1000, &t, |t, i| i * t).map(|run| run[999])
///         })
///     })
///     .collect();
/// for (t, handle) in handles.into_iter().enumerate() {
///     assert_eq!(handle.join().unwrap()?, 999 * t as u64);
/// }
/// # Ok::<(), procpool::Error>(())
/// ```
pub struct Pool {
    /// The shared-memory chunk queue, at the start of `region`.
    control: Control,
    /// Wakes the dispatch loop from another thread of ours (the window writer).
    waker: IpcSender<()>,
    /// The waker's receiver id in `set`.
    waker_rid: u64,
    /// The last job spec's identity (workload, parameters, faults, …) and its id: jobs
    /// with the same spec reuse the id, and workers that have it are not sent it again.
    specs: spec::Specs,
    /// The next posting's id.
    next_posting: u64,
    /// Where spawned workers put their handshake sockets; removed with the pool.
    dir: PrivateDir,
    /// What starting workers cost since the last job, charged to the next.
    charges: Charges,
    start: StartMethod,
    /// CPUs workers are pinned to, round-robin by id (empty: not pinned).
    pin: Vec<usize>,
    exe: spawn::WorkerExe,
    handshake_timeout: Duration,
    supervision: Supervision,
    observer: Option<Arc<dyn Observer>>,
    max_restarts: u64,
    set: IpcReceiverSet,
    by_receiver: HashMap<u64, usize>,
    workers: Vec<WorkerSlot>,
    region: SharedRegion,
    mapping: Option<Mapping>,
    inflight: usize,
    inflight_auto: bool,
    spawn_time: Duration,
    next_job: u64,
    broken: bool,
    /// What the workers can run (name, element size), from their `Hello`.
    workloads: Vec<Registered>,
    /// The largest region whose memory was checked against the machine.
    memory_checked: u128,
    /// Recycling limits.
    recycle: Recycle,
    /// When the dispatch loops look for ended workers next ([`Pool::ended_workers`]).
    death_scan: Instant,
    /// The cancel token and deadline of the job in progress.
    job_stop: quiesce::JobStop,
    /// The last posting, closed without waiting for its workers to leave it: the next job
    /// waits ([`Pool::settle`]).
    draining: Option<quiesce::Draining>,
}

/// What starting workers cost outside a job (while the pool started, or between jobs),
/// charged to the next job: it counts their handshakes and their deaths as its own.
#[derive(Debug, Default)]
struct Charges {
    /// Messages and bytes of the handshakes.
    handshakes: Ipc,
    /// Workers that died while starting, or between jobs.
    deaths: Vec<Death>,
}

/// When a worker process is replaced by a fresh one (0: never).
#[derive(Debug, Clone, Copy)]
struct Recycle {
    /// After this many chunks.
    chunks: u64,
    /// Once its resident memory passes this many bytes.
    rss: u64,
}

/// A workload as the workers get it.
struct Encoded {
    /// Its parameters, encoded (postcard's format).
    params: Vec<u8>,
    /// The memfds it shares and their sizes.
    shared: JobInputs,
    /// What the spec says of each memfd.
    refs: Vec<InputRef>,
}

/// What a job shares with the workers through memfds, in the order its spec lists them:
/// its [`crate::Input`] and [`crate::Param`] values (and, once the spec is complete, its
/// parameters when large). Their descriptors go to each worker that does not hold them
/// yet.
pub(super) struct JobInputs {
    pub(super) sealed: Vec<Arc<Sealed>>,
    /// Bytes of its `Input` values.
    pub(super) input_bytes: u64,
    /// Bytes of its encoded parameters, `Param` values included.
    pub(super) param_bytes: u64,
}

/// Encodes a workload's parameters for the workers and lists the memfds it shares (each
/// `Input` field writes an index and lists itself, the data never encoded; each `Param`
/// field too, in a memfd of its own, encoded only when it changed).
fn encode<W: Workload>(
    workload: &W,
    cache: &mut crate::engine::input::ParamCache,
) -> Result<Encoded> {
    let (params, encoded) = crate::engine::input::encoding_params(cache, || {
        crate::workload::params_format::to_vec(workload)
    });
    let params = params.map_err(|e| Error::Ipc(format!("cannot encode the workload: {e}")))?;
    let (inputs, param_values) = (encoded.inputs, encoded.param_bytes);
    // One more place for the parameters themselves, when they are large.
    let shared = inputs.len() + usize::from(params.len() > SEALED_PARAMS_BYTES);
    if shared > MAX_INPUTS {
        return Err(Error::invalid_input(format!(
            "{} shares {shared} memfds (its distinct procpool::Input and procpool::Param \
             values, and its parameters when above {} KiB); a job may share at most \
             {MAX_INPUTS}",
            W::NAME,
            SEALED_PARAMS_BYTES >> 10
        )));
    }
    let refs: Vec<InputRef> = inputs
        .iter()
        .map(|s| InputRef {
            id: s.id(),
            bytes: s.len() as u64,
            elem_size: s.elem_size() as u32,
        })
        .collect();
    let input_bytes = refs.iter().map(|i| i.bytes).sum::<u64>() - param_values;
    let param_bytes = params.len() as u64 + param_values;
    Ok(Encoded {
        params,
        shared: JobInputs {
            sealed: inputs,
            input_bytes,
            param_bytes,
        },
        refs,
    })
}

/// A finished job: its measurements, and its chunks' accumulators when it reduced.
struct Finished {
    stats: JobStats,
    /// The encoded accumulators, as the dispatcher found them.
    reduced: Vec<ReducedChunk>,
}

impl Finished {
    /// Combines the job's accumulators in chunk order into `W::Acc`, recorded as JSON in
    /// its measurements; the accumulators stay, in chunk order.
    fn combine<W: Reduce>(mut self, workload: &W, n: u64) -> Result<(W::Acc, Finished)> {
        let parts = in_chunk_order(std::mem::take(&mut self.reduced), n)?;
        let value =
            crate::workload::decode_combined(workload, &mut parts.iter().map(|p| p.acc.as_slice()))
                .map_err(Error::Ipc)?;
        self.stats.reduction =
            Some(serde_json::to_value(&value).unwrap_or(serde_json::Value::Null));
        self.reduced = parts;
        Ok((value, self))
    }
}

/// One chunk's encoded accumulator, as a reducing job collects them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReducedChunk {
    /// The chunk's indices.
    pub(crate) range: std::ops::Range<u64>,
    /// Its accumulator, postcard-encoded.
    pub(crate) acc: Vec<u8>,
}

/// Puts a job's chunk accumulators in chunk order and checks that they cover `0..n`
/// exactly once (a chunk that ran twice, after a timeout, counts once). The dispatchers
/// name a chunk done without its accumulator, and its worker, as they collect them; this
/// is the last check, in words of elements and neighbouring chunks.
pub(crate) fn in_chunk_order(mut parts: Vec<ReducedChunk>, n: u64) -> Result<Vec<ReducedChunk>> {
    parts.sort_by_key(|p| (p.range.start, p.range.end));
    parts.dedup_by(|later, earlier| later.range == earlier.range);
    let mut covered = 0;
    let lacks = |from: u64, to: u64, next: Option<&ReducedChunk>| {
        let after = match from {
            0 => "at the start".to_string(),
            _ => format!("after the chunk ending at element {from}"),
        };
        let before = next.map_or(String::new(), |p| {
            format!(
                ", before the chunk of elements {}..{}",
                p.range.start, p.range.end
            )
        });
        Error::Ipc(format!(
            "the reduction lacks elements {from}..{to} ({after}{before}): no chunk's \
             accumulator covers them"
        ))
    };
    for p in &parts {
        if p.range.start != covered || p.range.end < p.range.start {
            return Err(lacks(covered, p.range.start.max(covered), Some(p)));
        }
        covered = p.range.end;
    }
    if covered != n {
        return Err(lacks(covered, n, None));
    }
    Ok(parts)
}

/// What a reducing job asks of the workers besides the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Want {
    /// The output in the shared region (false: reduction only, no output buffer).
    pub(crate) output: bool,
    /// Bytes of a chunk's accumulator slot (0: no reduction).
    pub(crate) reduce_slot: u64,
}

impl Want {
    /// The output, no reduction: a plain [`Pool::run_with`].
    pub(crate) const OUTPUT: Want = Want {
        output: true,
        reduce_slot: 0,
    };
}

/// The outcome of [`Pool::reduce`]: the combined accumulator and the measurements.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Reduced<A> {
    /// The chunks' accumulators combined in chunk order.
    pub value: A,
    /// The measurements ([`JobStats::reduction`] holds `value` as JSON).
    pub stats: JobStats,
}

/// A region up to this size is kept between jobs even when the next job needs far less of
/// it: cheaper than giving back and faulting in again, and too small to matter.
const REUSE_SMALL_REGION: u64 = 64 << 20;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.pids())
            .field("inflight", &self.inflight)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`Pool::run`]: the results, still in shared memory, and the measurements.
///
/// Borrowing the pool keeps the results valid: the next job needs `&mut Pool`, and while a
/// `PoolRun` lives the pool cannot be used (`pool.pids()` beside `run.results()` is error
/// E0502). Read what you need and drop the run, or take an owned copy with
/// [`PoolRun::to_vec`] (or [`PoolRun::into_parts`], with the measurements), which ends the
/// borrow. It dereferences to the output slice: `run[i]`, `run.iter()`, `run.len()`.
pub struct PoolRun<'pool, T> {
    pool: &'pool Pool,
    stats: JobStats,
    /// The job's chunk accumulators, when it reduced.
    reduced: Vec<ReducedChunk>,
    _elem: std::marker::PhantomData<T>,
}

impl<'pool, T> PoolRun<'pool, T> {
    fn new(pool: &'pool Pool, finished: Finished) -> Self {
        PoolRun {
            pool,
            stats: finished.stats,
            reduced: finished.reduced,
            _elem: std::marker::PhantomData,
        }
    }
}

impl<T: Element> PoolRun<'_, T> {
    /// The output, `results()[i]` for index `i`.
    pub fn results(&self) -> &[T] {
        let Some(mapping) = self.pool.mapping.as_ref().filter(|m| !m.is_empty()) else {
            return &[];
        };
        // The region may be longer than this job's output (kept from a larger job).
        let len = usize::try_from(self.stats.n)
            .ok()
            .and_then(|n| n.checked_mul(std::mem::size_of::<T>()))
            .map_or(mapping.len(), |bytes| bytes.min(mapping.len()));
        // SAFETY: the job is finished: every chunk was reported done and none is in flight,
        // so no worker writes the region while this borrow of the pool lives (the next job
        // needs `&mut Pool`); `len` is within the mapping.
        let bytes = unsafe { mapping.slice(0..len) };
        bytemuck::cast_slice(bytes)
    }

    /// The measurements.
    pub fn stats(&self) -> &JobStats {
        &self.stats
    }

    /// A copy of the output, which outlives the run: the pool is free again for
    /// [`Pool::pids`] or the next job while you hold it.
    pub fn to_vec(&self) -> Vec<T> {
        self.results().to_vec()
    }

    /// The output copied out and the measurements, ending the run's borrow of the pool.
    pub fn into_parts(self) -> (Vec<T>, JobStats) {
        (self.results().to_vec(), self.stats)
    }

    /// The job's chunk accumulators as the workers left them, when it reduced.
    pub(crate) fn reduced_chunks(&self) -> &[ReducedChunk] {
        &self.reduced
    }
}

impl<T: Element> std::ops::Deref for PoolRun<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.results()
    }
}

impl Pool {
    /// A builder with default settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Process ids of the workers, in id order.
    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    /// Chunks in flight per worker.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// How the workers were started.
    pub fn start_method(&self) -> StartMethod {
        self.start
    }

    /// How long starting the workers (spawn and handshake) took: those [`PoolBuilder::build`]
    /// waited for (all of them, unless [`PoolBuilder::start_in_background`]).
    pub fn spawn_time(&self) -> Duration {
        self.spawn_time
    }

    /// Runs `workload` on `0..n` with default options.
    ///
    /// A pool is always ready for the next job, whatever happened to the last one:
    /// - a job refused up front (bad options, a workload the workers do not have) changes
    ///   nothing: the same workers run the next job;
    /// - a job stopped by a kernel panic, a cancel or a deadline keeps the workers: the next
    ///   job runs on the same processes (see [When workers are replaced](Pool#when-workers-are-replaced));
    /// - a job that failed otherwise on the way (a chunk out of retries, too many
    ///   restarts, an interrupt) stops every worker; the next job starts a fresh set;
    /// - workers that died between jobs are replaced before the next job hands out a
    ///   chunk, and never blamed for one.
    pub fn run<W: Workload>(&mut self, workload: &W, n: u64) -> Result<PoolRun<'_, W::Output>> {
        self.run_with(workload, n, &JobOptions::default())
    }

    /// Runs `workload` on `0..n`.
    pub fn run_with<W: Workload>(
        &mut self,
        workload: &W,
        n: u64,
        options: &JobOptions,
    ) -> Result<PoolRun<'_, W::Output>> {
        let finished = self.job(workload, n, options, None, Want::OUTPUT, None)?;
        Ok(PoolRun::new(self, finished))
    }

    /// [`Pool::run_with`], reducing too when `want` says so (the lab's run, whose reducer
    /// has its type erased).
    pub(crate) fn run_want<W: Workload>(
        &mut self,
        workload: &W,
        n: u64,
        options: &JobOptions,
        want: Want,
    ) -> Result<PoolRun<'_, W::Output>> {
        let finished = self.job(workload, n, options, None, want, None)?;
        Ok(PoolRun::new(self, finished))
    }

    /// Runs `workload` on `0..n` in bounded memory: the shared region is a ring of `ring`
    /// windows of `window_elems` elements; each window, once complete, is handed to `sink`
    /// (in order, on a thread of its own, while the workers fill the next ones), and then its
    /// slot is reused for a later window. Memory stays at `ring` windows, whatever `n` is.
    pub fn stream_with<W: Workload>(
        &mut self,
        workload: &W,
        n: u64,
        options: &JobOptions,
        window_elems: u64,
        ring: u64,
        sink: &mut (dyn WindowSink + Send),
    ) -> Result<JobStats> {
        if options.schedule == Schedule::Static {
            return Err(Error::invalid(
                "schedule",
                "`output` streams windows in order: use `schedule` dynamic or guided",
            ));
        }
        if options.transport != Transport::Shm {
            return Err(Error::invalid(
                "transport",
                "`output` streams through shared-memory windows: use `transport` shm",
            ));
        }
        let layout = Layout {
            window_elems: window_elems.max(1),
            ring: ring.max(1),
        };
        let stream = Some((layout, sink));
        let finished = self.job(workload, n, options, stream, Want::OUTPUT, None)?;
        Ok(finished.stats)
    }

    /// Reduces `workload` over `0..n` with default options: see [`Pool::reduce_with`].
    pub fn reduce<W: Reduce>(&mut self, workload: &W, n: u64) -> Result<Reduced<W::Acc>> {
        self.reduce_with(workload, n, &JobOptions::default())
    }

    /// Reduces `workload` over `0..n` without an output buffer: each worker runs the
    /// kernel into memory of its own, reduces the chunk ([`Reduce::reduce_chunk`]) and
    /// hands back only the accumulator; this process combines them in chunk order. The
    /// shared region holds no output, however large `n` is.
    ///
    /// ```no_run
    /// use procpool::Pool;
    /// use procpool::workload::Primes;
    ///
    /// procpool::init();
    /// let mut pool = Pool::builder().workers(2).build()?;
    /// let primes = pool.reduce(&Primes, 1_000_000)?;
    /// assert_eq!(primes.value, 78_498);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn reduce_with<W: Reduce>(
        &mut self,
        workload: &W,
        n: u64,
        options: &JobOptions,
    ) -> Result<Reduced<W::Acc>> {
        let want = Want {
            output: false,
            reduce_slot: crate::workload::acc_slot::<W>(),
        };
        let finished = self.job(workload, n, options, None, want, None)?;
        let (value, finished) = finished.combine(workload, n)?;
        Ok(Reduced {
            value,
            stats: finished.stats,
        })
    }

    /// Runs `workload` on `0..n` like [`Pool::run_with`] and reduces it too: the output in
    /// shared memory and the chunks' accumulators combined in chunk order.
    pub fn run_and_reduce_with<W: Reduce>(
        &mut self,
        workload: &W,
        n: u64,
        options: &JobOptions,
    ) -> Result<(PoolRun<'_, W::Output>, W::Acc)> {
        let want = Want {
            output: true,
            reduce_slot: crate::workload::acc_slot::<W>(),
        };
        let finished = self.job(workload, n, options, None, want, None)?;
        let (value, finished) = finished.combine(workload, n)?;
        Ok((PoolRun::new(self, finished), value))
    }

    /// Runs `workload` on `0..n` and hands each chunk to `f` as soon as it is done
    /// (Python's `imap_unordered` / `as_completed`), while the workers compute the next
    /// ones: its index, its range and a view of its results in the shared region (no
    /// copy). Every chunk comes exactly once, whatever the schedule, the dispatch, a
    /// measured chunk size, or workers that die and have their chunks retried.
    ///
    /// - [`ChunkOrder::Completion`]: in the order chunks finish. On the shared-memory
    ///   queue, workers append each finished chunk to a completion log in the region and
    ///   wake the parent only when it sleeps, so a chunk costs at most one wake-up.
    /// - [`ChunkOrder::Index`]: chunk `k` as soon as chunks `0..=k` are done.
    ///
    /// `f` returning [`ControlFlow::Break`](std::ops::ControlFlow::Break) stops the job:
    /// no more chunks are handed out, the workers finish the chunks they hold (on the
    /// shared-memory queue one each; on the channels those already sent, up to `inflight`
    /// each), and this returns `Ok` with [`JobStats::stopped_early`] set; the same workers
    /// run the next job. (On the queue, a chunk still running after [`Supervision::grace`]
    /// has its worker killed, and the next job starts a fresh one in its place.) `f` runs on the dispatch loop's thread: while it runs, the workers go on
    /// computing, but nothing else is supervised, so keep it short (send heavy work
    /// elsewhere). If `f` panics, every worker is stopped before the panic goes on (the
    /// next job starts fresh ones).
    ///
    /// A callback rather than an `Iterator`: the view borrows the shared region, which the
    /// next job rewrites, so it may live only while the job's borrow of the pool does; an
    /// iterator's items could not borrow from the iterator itself without copying each
    /// chunk out.
    ///
    /// ```no_run
    /// use std::ops::ControlFlow;
    /// use procpool::{ChunkOrder, JobOptions, Pool};
    /// use procpool::workload::Squares;
    ///
    /// procpool::init();
    /// let mut pool = Pool::builder().workers(4).build()?;
    /// let options = JobOptions { chunk_size: Some(10_000), ..JobOptions::default() };
    /// let mut total = 0u64;
    /// let order = ChunkOrder::Completion;
    /// let stats = pool.for_each_chunk(&Squares, 1_000_000, &options, order, |chunk| {
    ///     total += chunk.output.iter().sum::<u64>();
    ///     println!("chunk {} ({:?}) done", chunk.index, chunk.range);
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert_eq!(stats.chunks_delivered, 100);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn for_each_chunk<W: Workload, F>(
        &mut self,
        workload: &W,
        n: u64,
        options: &JobOptions,
        order: ChunkOrder,
        mut f: F,
    ) -> Result<JobStats>
    where
        F: FnMut(Chunk<'_, W::Output>) -> std::ops::ControlFlow<()>,
    {
        let mut visit =
            |index: u64, range: std::ops::Range<u64>, bytes: &[u8], _: Option<&[u8]>| {
                f(Chunk {
                    index,
                    range,
                    output: bytemuck::cast_slice(bytes),
                    acc: (),
                })
            };
        let finished = self.each_job(workload, n, options, order, Want::OUTPUT, &mut visit)?;
        Ok(finished.stats)
    }

    /// [`Pool::for_each_chunk`] for a [`Reduce`] workload: each chunk comes with its
    /// accumulator ([`Chunk::acc`]), as its worker reduced it, and the whole job's
    /// reduction (the accumulators combined in chunk order) is returned beside the
    /// measurements, unless the callback stopped the job early.
    ///
    /// ```no_run
    /// use std::ops::ControlFlow;
    /// use procpool::{ChunkOrder, JobOptions, Pool};
    /// use procpool::workload::Primes;
    ///
    /// procpool::init();
    /// let mut pool = Pool::builder().workers(2).build()?;
    /// let options = JobOptions { chunk_size: Some(100_000), ..JobOptions::default() };
    /// let (_, total) = pool.for_each_reduced_chunk(&Primes, 1_000_000, &options,
    ///     ChunkOrder::Index, |chunk| {
    ///         println!("{:?}: {} primes", chunk.range, chunk.acc);
    ///         ControlFlow::Continue(())
    ///     })?;
    /// assert_eq!(total, Some(78_498));
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn for_each_reduced_chunk<W: Reduce, F>(
        &mut self,
        workload: &W,
        n: u64,
        options: &JobOptions,
        order: ChunkOrder,
        mut f: F,
    ) -> Result<(JobStats, Option<W::Acc>)>
    where
        F: FnMut(Chunk<'_, W::Output, W::Acc>) -> std::ops::ControlFlow<()>,
    {
        let mut undecodable = None;
        let mut visit =
            |index: u64, range: std::ops::Range<u64>, bytes: &[u8], acc: Option<&[u8]>| match acc
                .map(postcard::from_bytes::<W::Acc>)
            {
                Some(Ok(acc)) => f(Chunk {
                    index,
                    range,
                    output: bytemuck::cast_slice(bytes),
                    acc,
                }),
                _ => {
                    undecodable = Some(index);
                    std::ops::ControlFlow::Break(())
                }
            };
        let want = Want {
            output: true,
            reduce_slot: crate::workload::acc_slot::<W>(),
        };
        let finished = self.each_job(workload, n, options, order, want, &mut visit)?;
        if let Some(index) = undecodable {
            return Err(Error::Ipc(format!(
                "chunk {index} of `{}` came without an accumulator that decodes",
                W::NAME
            )));
        }
        if finished.stats.stopped_early {
            return Ok((finished.stats, None));
        }
        let (value, finished) = finished.combine(workload, n)?;
        Ok((finished.stats, Some(value)))
    }

    /// The common part of [`Pool::for_each_chunk`] and [`Pool::for_each_reduced_chunk`].
    fn each_job<W: Workload>(
        &mut self,
        workload: &W,
        n: u64,
        options: &JobOptions,
        order: ChunkOrder,
        want: Want,
        raw: &mut RawVisit<'_>,
    ) -> Result<Finished> {
        let each = Each::new(order, raw);
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.job(workload, n, options, None, want, Some(each))
        }));
        match ran {
            Ok(result) => result,
            Err(payload) => {
                // The callback panicked inside the dispatch loop: the posting is still
                // open and workers may hold chunks. Stop them all now; the next job
                // starts a fresh set.
                self.broken = true;
                self.stop_all();
                std::panic::resume_unwind(payload)
            }
        }
    }

    /// The common part of [`Pool::run_with`], [`Pool::stream_with`] and
    /// [`Pool::for_each_chunk`] (`each`).
    fn job<W: Workload>(
        &mut self,
        workload: &W,
        n: u64,
        options: &JobOptions,
        stream: Option<(Layout, &mut (dyn WindowSink + Send))>,
        want: Want,
        each: Option<Each<'_>>,
    ) -> Result<Finished> {
        let began = Instant::now();
        let elem_size = std::mem::size_of::<W::Output>();
        self.check_registered::<W>(want.reduce_slot > 0)?;
        check_deadline(options.deadline)?;
        if self.broken {
            // A failed job stopped every worker: start a fresh set.
            self.revive()?;
        } else {
            // The last job may have stopped early: its workers finish their chunks first.
            self.settle()?;
            self.replace_the_dead()?;
        }
        let layout = stream.as_ref().map_or(Layout::flat(n), |(l, _)| *l);
        let results_len = match want.output {
            true => u128::from(layout.region_elems(n)) * elem_size as u128,
            false => 0,
        };
        // Reading the machine's memory costs tens of microseconds: a region no larger than
        // one already checked (or mapped) needs no new look.
        if results_len > self.memory_checked {
            check_memory(
                &format!("{} with n = {n}", W::NAME),
                &[("shared results", results_len)],
                &Machine::read(),
            )?;
            self.memory_checked = results_len;
        }
        check_chunk_size(options.chunk_size)?;
        check_dispatch(options)?;
        let workers = self.workers.len();
        let chunk_size = options.chunk_size.or_else(|| {
            if W::WAITS && !options.auto_chunk {
                Some(crate::engine::schedule::waiting_chunk_size(n, workers))
            } else if stream.is_some() {
                // About four chunks per worker in every window.
                Some(crate::engine::schedule::default_chunk_size(
                    layout.window_elems,
                    workers,
                ))
            } else {
                None
            }
        });
        let mut dispenser = Dispenser::new(options.schedule, n, workers, chunk_size);
        if stream.is_some() {
            dispenser = dispenser.with_windows(
                layout.window_elems,
                layout.window_elems.saturating_mul(layout.ring),
            );
        }
        // With a measured chunk size the count is known later, in the dispatch loop.
        let measured = options.auto_chunk && options.schedule != Schedule::Static && n > 0;
        if !measured && let Some(last) = options.faults.iter().map(|f| f.chunk).max() {
            crate::engine::fault::check_faults(&options.faults, dispenser.chunks_up_to(last))?;
        }
        let Encoded {
            params,
            mut shared,
            refs: input_refs,
        } = encode(workload, &mut self.specs.param_cache)?;
        // The queue's chunk table (a done byte and a reduction per chunk) follows the
        // results; with a measured chunk size, the probes' table first (it grows later).
        let table_chunks = match options.dispatch {
            Dispatch::Channel => 0,
            Dispatch::Queue if measured => queue::probe_plan(n, workers, dispenser.boundary()).1,
            Dispatch::Queue => queue::geometry(&dispenser, n, workers).chunks(),
        };
        let region_len = match options.dispatch {
            Dispatch::Channel => results_len,
            Dispatch::Queue => u128::from(
                crate::engine::control::TableLayout::after(
                    results_len as u64,
                    table_chunks,
                    layout.ring,
                    want.reduce_slot,
                )
                .with_log(each.is_some())
                .with_trace(options.trace)
                .end(),
            ),
        };
        if region_len > results_len.max(self.memory_checked) {
            check_memory(
                &format!("{} with n = {n}", W::NAME),
                &[("shared results and chunk table", region_len)],
                &Machine::read(),
            )?;
            self.memory_checked = region_len;
        }
        self.size_region(region_len)?;
        let job = self.next_job;
        self.next_job += 1;
        let spec = JobSpec {
            job,
            spec_id: 0,
            workload: W::NAME.to_string(),
            params: Default::default(),
            params_sealed: false,
            elem_size: elem_size as u32,
            inputs: input_refs,
            faults: options.faults.clone(),
            transport: options.transport,
            layout,
            reduce_slot: want.reduce_slot,
            output: want.output,
        };
        let param_bytes = shared.param_bytes;
        let spec = self
            .specs
            .complete(spec, params, &mut shared.sealed)
            .map_err(|e| {
                Error::Ipc(format!(
                    "cannot place the job's {param_bytes}-byte parameters in a sealed memfd: {e}"
                ))
            })?;
        self.job_stop = quiesce::JobStop::new(options, &self.waker, began);
        if let Some(stop) = self.job_stop.due() {
            self.job_stop = quiesce::JobStop::default();
            return Err(stop.error(0, 0, n));
        }
        observe::tell(&self.observer, Event::JobStarted { n });
        let elem_size = u64::from(spec.elem_size);
        let result = self.with_ring(stream, n, elem_size, |pool, ring| {
            let core = JobCore::new(pool, spec, n, shared, options, each);
            match options.dispatch {
                Dispatch::Channel => pool.dispatch(core, dispenser, options, ring),
                Dispatch::Queue => pool.dispatch_queue(core, dispenser, options, ring),
            }
        });
        self.job_stop = quiesce::JobStop::default();
        self.job_ended(result)
    }

    /// After a job: tells the observer how it ended. A job that failed stops every worker
    /// (the next job starts a fresh set), unless its error costs only the job: a panic, a
    /// cancel or a deadline keeps them.
    fn job_ended(&mut self, result: Result<Finished>) -> Result<Finished> {
        let completed = result.is_ok();
        observe::tell(&self.observer, Event::JobEnded { completed });
        match result {
            Ok(finished) => Ok(finished),
            // A panic, a cancel or a deadline costs the job, not the workers.
            Err(e) if quiesce::keeps_workers(&e) => {
                self.abandon();
                Err(e)
            }
            Err(mut e) => {
                self.broken = true;
                let (term, kill) = self.stop_all();
                if let Error::Interrupted {
                    needed_term,
                    needed_kill,
                    ..
                } = &mut e
                {
                    (*needed_term, *needed_kill) = (term, kill);
                }
                Err(e)
            }
        }
    }

    /// Makes the shared region `region_len` bytes long and maps it. A region that is
    /// already the right size (or a little larger) is used again as it is: every element of
    /// the job is written before it is read, so nothing needs zeroing. Otherwise the region
    /// is emptied (its pages given back) and resized.
    fn size_region(&mut self, region_len: u128) -> Result<()> {
        let have = self.region.len();
        let reuse = self.mapping.is_some()
            && u128::from(have) >= region_len
            && (u128::from(have) <= region_len.saturating_mul(2) || have <= REUSE_SMALL_REGION);
        if !reuse {
            self.mapping = None;
            let page = self.region.page_bytes();
            if page > 4096 {
                // A huge page that is not there is a SIGBUS in whichever worker touches
                // it: refuse the job instead. The previous job's pages come back first.
                let held = self.region.len().div_ceil(page);
                let want = (region_len as u64).div_ceil(page);
                let free = crate::engine::shm::HugePages::read().map_or(0, |h| h.free);
                if free + held < want {
                    return Err(huge_refusal(want + 1, page, free + held));
                }
            }
            self.region.reset(region_len as u64)?;
            let mapping = self.region.map()?;
            if self.control.huge_advise() {
                mapping.advise_huge();
            }
            self.mapping = Some(mapping);
        }
        Ok(())
    }

    /// Opens a posting that sends the workers to their channels for chunks (channel
    /// dispatch); returns its id.
    fn open_channel_posting(&mut self, spec: &JobSpec) -> u64 {
        let id = self.next_posting;
        self.next_posting += 1;
        let posting = crate::engine::control::Posting {
            id,
            job: spec.job,
            spec_id: spec.spec_id,
            channel: true,
            region_len: self.region.len(),
            ring: 1,
            window_elems: 1,
            size: 1,
            workers: self.workers.len() as u64,
            boundary: u64::MAX,
            limit: u64::MAX,
            recycle_chunks: self.recycle.chunks,
            recycle_rss: self.recycle.rss,
            ..Default::default()
        };
        self.control.open(&posting, 0);
        id
    }

    /// Sends the job's spec to every connected worker that does not have it yet, counting
    /// the messages in the job.
    fn send_spec(&mut self, core: &mut JobCore) {
        let spec = &core.spec;
        // A few hundred bytes at most (large parameters travel in a sealed memfd, among
        // the inputs): made and measured once, cloned per worker.
        let job = ToWorker::Job(spec.clone());
        let size = crate::engine::protocol::wire_size(&job);
        let to = |w: &WorkerSlot| w.spec_sent != spec.spec_id && w.tx.is_some();
        // Wake them to read the spec: a large one fills the socket and the send waits
        // until the worker reads, which it would otherwise do only when its sleep ends.
        let slots = self.workers.iter().enumerate().filter(|(_, w)| to(w));
        let slots: Vec<usize> = slots.map(|(slot, _)| slot).collect();
        if slots.is_empty() {
            return;
        }
        self.control
            .announce_spec(slots.iter().copied(), spec.spec_id);
        for slot in slots {
            let w = &mut self.workers[slot];
            let Some(tx) = w.tx.as_ref() else { continue };
            // First the descriptors of the inputs it does not hold yet, on its private
            // socket; it takes them right after the spec, and then holds exactly the
            // spec's inputs (as we note here).
            let new: Vec<_> = core
                .inputs
                .sealed
                .iter()
                .filter(|s| !w.inputs_held.contains(&s.id()))
                .map(|s| s.fd())
                .collect();
            if !new.is_empty() {
                let Some(socket) = w.inputs_socket.as_ref() else {
                    continue;
                };
                // A worker that is gone is noticed by the dispatch loop.
                if crate::engine::sealed::send_fds(socket.as_fd(), spec.spec_id, &new).is_err() {
                    continue;
                }
                core.ipc.one(crate::engine::sealed::BATCH_BYTES);
                core.input_sends += 1;
            }
            let msg = job.clone();
            // A worker that is gone is noticed by the dispatch loop (its channel closes).
            if tx.send(msg).is_ok() {
                w.spec_sent = spec.spec_id;
                w.inputs_held = spec.inputs.iter().map(|i| i.id).collect();
                core.ipc.one(size);
            }
        }
    }

    /// Refuses, before any worker sees it, a job whose workload the workers cannot run:
    /// not registered in their binary, or registered with another element type.
    fn check_registered<W: Workload>(&self, reduces: bool) -> Result<()> {
        let (name, elem_size) = (W::NAME, std::mem::size_of::<W::Output>());
        let type_name = std::any::type_name::<W>();
        if elem_size == 0 {
            return Err(Error::invalid_input(format!(
                "workload `{name}` has a zero-sized output element ({}): an element must hold \
                 at least one byte",
                std::any::type_name::<W::Output>()
            )));
        }
        if name == crate::engine::closure::CLOSURE_NAME {
            return self.check_closures();
        }
        match self.workloads.iter().find(|r| r.name == name) {
            Some(r) if reduces && r.type_name == type_name && !r.reduces => {
                Err(Error::invalid_input(format!(
                    "workload `{name}` is registered in the workers' binary without its \
                     reduction: register it with Registry::register_reduce::<{type_name}>()"
                )))
            }
            Some(r) if r.type_name != type_name => Err(Error::invalid_input(format!(
                "workload `{name}` is {} in the workers' binary, not {type_name}: two types \
                 share one name; give one of them another Workload::NAME",
                r.type_name
            ))),
            Some(r) if r.elem_size as usize == elem_size => Ok(()),
            Some(r) => Err(Error::invalid_input(format!(
                "workload `{name}` has {elem_size}-byte elements here but {}-byte elements \
                 in the workers' binary: they are different builds",
                r.elem_size
            ))),
            None => {
                let known: Vec<&str> = self
                    .workloads
                    .iter()
                    .map(|r| r.name.as_str())
                    .filter(|&n| n != crate::engine::closure::CLOSURE_NAME)
                    .collect();
                // Forked workers serve the builder's registry; the others, init_with's.
                let fix = match self.start {
                    StartMethod::Fork => {
                        "workers started with StartMethod::Fork serve the registry given to \
                         PoolBuilder::registry (the built-ins unless you give one): register it \
                         there (Registry::builtin().register::<YourWorkload>())"
                    }
                    _ => {
                        "register it (Registry::builtin().register::<YourWorkload>()) and give \
                         that registry to procpool::init_with first thing in the workers' main"
                    }
                };
                Err(Error::invalid_input(format!(
                    "workload `{name}` is not registered in the workers' binary (it has: {}): \
                     {fix}",
                    known.join(", ")
                )))
            }
        }
    }

    /// Refuses a closure job unless the workers run this very build: a closure is named by
    /// its place in the binary. (Its descriptor checks the element size in the worker.)
    fn check_closures(&self) -> Result<()> {
        let ours = crate::workload::closures_of_this_build();
        match self.workloads.iter().find(|r| r.name == ours.name) {
            Some(theirs) if theirs.type_name == ours.type_name => Ok(()),
            theirs => Err(Error::invalid_input(format!(
                "a closure runs only in workers of the same build, and these run {} while this \
                 program is {}: drop worker_exe (or point it at this program) and call \
                 procpool::init() first thing in its main",
                theirs.map_or("a build without closures", |r| r
                    .type_name
                    .trim_start_matches("closures of ")),
                ours.type_name.trim_start_matches("closures of ")
            ))),
        }
    }

    /// Stops and reaps every worker now (dropping the pool does the same).
    pub fn shutdown(mut self) {
        self.stop_all();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.mapping = None;
        self.stop_all();
    }
}
