//! The pool: worker processes, their channels, and the shared region they write into.
//!
//! [`PoolBuilder::build`] starts the workers (`spawn.rs`); [`Pool::run`] sends a job and
//! hands out its chunks (`dispatch.rs`); a job stopped early by a panic, a cancel or a
//! deadline keeps the workers (`quiesce.rs`); dropping the pool stops and reaps every worker.

mod auto_chunk;
mod dispatch;
mod each;
mod ledger;
mod observe;
mod private_dir;
mod queue;
mod quiesce;
mod spawn;
mod spec;
mod trace;
mod watchdog;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_channel::TrySelectError;
use ipc_channel::ipc::{IpcReceiverSet, IpcSelectionResult, IpcSender};
use serde::Serialize;

use crate::engine::control::Control;
use crate::engine::fault::Fault;
use crate::engine::interrupt::Interrupt;
use crate::engine::limits::{Machine, check_memory};
use crate::engine::protocol::ToWorker;
use crate::engine::protocol::{
    Dispatch, InputRef, JobSpec, Layout, Registered, SEALED_PARAMS_BYTES, Transport,
};
use crate::engine::schedule::{Dispenser, Schedule};
use crate::engine::sealed::{MAX_INPUTS, Sealed};
use crate::engine::shm::{Mapping, SharedRegion};
use crate::engine::sys::{ExitCause, Process};
use crate::error::{Error, Result};
use crate::workload::{Element, Reduce, Registry, Workload};
pub use each::{Chunk, ChunkOrder};
use each::{Each, RawVisit};
pub use observe::{Event, Observer};
use private_dir::PrivateDir;
#[cfg(feature = "mpi")]
pub(crate) use private_dir::sweep_abandoned;
pub(crate) use spawn::TEST_WORKER_ENV;
pub use trace::{Trace, TraceAttempt, TraceEvent, TraceEventKind, TracePhase};

/// Default number of chunks in flight per worker: one running, one queued, so a worker never
/// waits a round trip for its next chunk and the parent never fills a channel.
pub(crate) const DEFAULT_INFLIGHT: usize = 2;
/// Default deadline for all workers of a start to connect back.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of retries of a chunk whose worker died or timed out.
pub(crate) const DEFAULT_RETRIES: u32 = 3;
/// Default grace period at each step of a stop (Shutdown, then SIGTERM, then SIGKILL).
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_millis(500);

/// The most chunk messages that may wait in one worker's channel.
///
/// ipc-channel's `send` blocks when the socket buffer is full. If the dispatch loop blocked
/// sending to a worker that is itself blocked sending its replies to us, both would wait
/// forever. A worker's channel holds at most `inflight` chunk messages, so an `inflight`
/// well below what the buffer holds means the loop's sends never block. Each small message
/// costs about 768 bytes of buffer (its kernel bookkeeping), the buffer is
/// `net.core.wmem_default` bytes; half of what fits is allowed.
pub(crate) fn max_inflight() -> usize {
    let buffer = std::fs::read_to_string("/proc/sys/net/core/wmem_default")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(212_992);
    (buffer / (2 * 768)).clamp(1, 4096)
}

/// Fails when this process was started as a procpool worker but is building a pool: its
/// `main` did not call [`crate::init`] first, so every worker would run `main` again, build
/// its own pool, and so on, a fork bomb. The worker gives up here instead; its parent then
/// reports that it exited before connecting, with the same advice.
fn refuse_to_recurse() -> Result<()> {
    let worker = std::env::args().nth(1).as_deref() == Some(crate::engine::protocol::WORKER_ARG)
        || std::env::var_os(TEST_WORKER_ENV).is_some();
    if worker {
        return Err(Error::invalid_input(
            "this process was started as a procpool worker, but its main builds a pool \
             instead of serving: call procpool::init() (or init_with) first thing in main",
        ));
    }
    Ok(())
}

/// The counts every pool and job needs to be at least 1: workers, chunks in flight, and the
/// chunk length when one is given. The lab checks them with this too, before anything
/// starts, in every mode.
pub(crate) fn check_counts(workers: usize, inflight: usize, chunk_size: Option<u64>) -> Result<()> {
    check_count("workers", workers as u64)?;
    check_count("inflight", inflight as u64)?;
    check_chunk_size(chunk_size)
}

/// Results through the channel travel in each chunk's reply: the queue has none.
pub(crate) fn check_dispatch(options: &JobOptions) -> Result<()> {
    if options.dispatch == Dispatch::Queue && options.transport == Transport::Channel {
        return Err(Error::invalid(
            "transport",
            "`transport` channel sends results back in each chunk's reply, and the shared-memory \
             queue has no replies: use `dispatch` channel with it (or `transport` shm)",
        ));
    }
    Ok(())
}

/// A chunk length, when one is given, is at least 1.
/// A job's deadline leaves it some time (a deadline past any clock is no deadline).
pub(crate) fn check_deadline(deadline: Option<Duration>) -> Result<()> {
    match deadline {
        Some(d) if d.is_zero() => Err(Error::invalid(
            "deadline",
            "a `deadline` of 0s stops every job before it starts: use at least 1ms, or leave \
             it unset for no limit",
        )),
        _ => Ok(()),
    }
}

fn check_chunk_size(chunk_size: Option<u64>) -> Result<()> {
    chunk_size.map_or(Ok(()), |size| check_count("chunk_size", size))
}

/// `option` (a count) is at least 1.
fn check_count(option: &'static str, value: u64) -> Result<()> {
    if value == 0 {
        return Err(Error::invalid(
            option,
            format!("`{option}` must be at least 1 (got 0)"),
        ));
    }
    Ok(())
}

/// Default limit on worker restarts in one job: enough for a few bad chunks on every
/// worker, small enough that a pool which cannot keep workers alive fails quickly.
pub(crate) fn default_max_restarts(workers: usize) -> u64 {
    10 + 2 * workers as u64
}

/// How worker processes are started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartMethod {
    /// Re-execute the worker binary and connect back over an ipc-channel one-shot server
    /// (like Python's `spawn`): a fresh process image, about a millisecond per worker.
    #[default]
    Spawn,
    /// `fork` this process (like Python's `fork`): no exec and no handshake, a fraction of a
    /// millisecond per worker. Only from a single-threaded process; workers that replace
    /// dead ones are spawned, because by then the pool has threads of its own.
    Fork,
}

impl std::fmt::Display for StartMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StartMethod::Spawn => "spawn",
            StartMethod::Fork => "fork",
        })
    }
}

/// How the pool reacts to workers that die, hang or are interrupted.
///
/// ```no_run
/// use std::time::Duration;
/// use procpool::{Pool, Supervision};
///
/// procpool::init();
/// // A chunk that runs past 2 s has its worker killed and is tried again, at most twice.
/// let supervision = Supervision {
///     retries: 2,
///     chunk_timeout: Some(Duration::from_secs(2)),
///     ..Supervision::default()
/// };
/// let pool = Pool::builder().workers(4).supervision(supervision).build()?;
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Supervision {
    /// A chunk whose worker died or timed out is retried this many times, so it is tried at
    /// most `retries + 1` times; then the job fails naming the chunk.
    pub retries: u32,
    /// Worker restarts allowed in one job (`None`: 10 + 2 × the number of workers).
    pub max_restarts: Option<u64>,
    /// A chunk running longer than this kills its worker and is retried like a crash.
    pub chunk_timeout: Option<Duration>,
    /// Grace period at each step of a stop: Shutdown message, then SIGTERM, then SIGKILL.
    pub grace: Duration,
    /// Set by SIGINT/SIGTERM (see [`Interrupt::install`]); the dispatch loop sees it at
    /// once when the signal interrupts its wait, and within 100 ms otherwise.
    pub interrupt: Interrupt,
    /// Retry a chunk whose kernel panicked, like a crash (default: no; a panic fails the
    /// job with [`Error::KernelPanicked`], since the same input would panic again).
    pub retry_panics: bool,
}

impl Supervision {
    /// Default number of retries of a chunk whose worker died or timed out.
    pub const DEFAULT_RETRIES: u32 = DEFAULT_RETRIES;
    /// Default grace period at each step of a stop (Shutdown, then SIGTERM, then SIGKILL).
    pub const DEFAULT_GRACE: Duration = DEFAULT_GRACE;
}

impl Default for Supervision {
    fn default() -> Self {
        Supervision {
            retries: DEFAULT_RETRIES,
            max_restarts: None,
            chunk_timeout: None,
            grace: DEFAULT_GRACE,
            interrupt: Interrupt::new(),
            retry_panics: false,
        }
    }
}

/// Everything a [`Pool`] is built from, as plain data: what [`PoolBuilder`]'s methods set,
/// for callers that keep settings in a struct (the lab's [`crate::RunOptions`] does).
/// `PoolBuilder::from(options)` builds from it; each field's meaning is on the builder
/// method of the same name.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Worker processes (see [`PoolBuilder::workers`]).
    pub workers: usize,
    /// Chunks in flight per worker (see [`PoolBuilder::inflight`]); with `inflight_auto`,
    /// the depth each job starts at.
    pub inflight: usize,
    /// Let each job choose its depth from its first chunks (see
    /// [`PoolBuilder::inflight_auto`]; the default).
    pub inflight_auto: bool,
    /// The executable workers run (see [`PoolBuilder::worker_exe`]).
    pub worker_exe: Option<PathBuf>,
    /// Workers start through a test binary's hidden entry (see
    /// [`PoolBuilder::test_harness`]).
    pub test_harness: bool,
    /// Deadline for workers to connect back (see [`PoolBuilder::handshake_timeout`]).
    pub handshake_timeout: Duration,
    /// Retries, restarts, timeouts, grace periods and the interrupt flag.
    pub supervision: Supervision,
    /// How workers start (see [`PoolBuilder::start`]).
    pub start: StartMethod,
    /// Pin each worker to a CPU (see [`PoolBuilder::pin`]).
    pub pin: bool,
    /// Who hears of progress and lost workers (see [`PoolBuilder::observer`]).
    pub observer: Option<Arc<dyn Observer>>,
    /// The workloads forked workers can run (see [`PoolBuilder::registry`]).
    pub registry: Registry,
    /// Tune glibc's allocator (see [`PoolBuilder::tune_allocator`]).
    pub tune_allocator: bool,
    /// Raise the open-file limit when needed (see [`PoolBuilder::raise_file_limit`]).
    pub raise_file_limit: bool,
    /// Start most workers while the first job runs (see
    /// [`PoolBuilder::start_in_background`]).
    pub start_in_background: bool,
    /// Replace a worker process after this many chunks (see
    /// [`PoolBuilder::max_chunks_per_worker`]).
    pub max_chunks_per_worker: Option<u64>,
    /// Replace a worker process once its resident memory passes this many bytes (see
    /// [`PoolBuilder::max_worker_rss`]).
    pub max_worker_rss: Option<u64>,
    /// Back the shared region with reserved huge pages (see [`PoolBuilder::huge_pages`]).
    pub huge_pages: bool,
}

/// How `huge_pages` backs a region on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HugeBacking {
    /// Reserved huge pages of this many bytes (`MFD_HUGETLB`).
    Hugetlb(u64),
    /// An ordinary memfd advised `MADV_HUGEPAGE` (shared memory transparent huge pages).
    Advise,
}

/// How to back `bytes` of results (and the control area's page) with huge pages: reserved
/// ones when enough are free, else transparent ones where the kernel gives them to shared
/// memory, else the refusal naming `/proc/sys/vm/nr_hugepages` and what is needed.
pub(crate) fn huge_pages_for(bytes: u64) -> Result<HugeBacking> {
    let huge = crate::engine::shm::HugePages::read();
    if let Some(h) = &huge
        && h.free >= h.needed(bytes)
    {
        return Ok(HugeBacking::Hugetlb(h.page_bytes));
    }
    if crate::engine::shm::shmem_thp() {
        return Ok(HugeBacking::Advise);
    }
    let Some(huge) = huge else {
        return Err(Error::invalid(
            "huge_pages",
            "`huge_pages`: this kernel reports no huge pages in /proc/meminfo",
        ));
    };
    Err(huge_refusal(huge.needed(bytes), huge.page_bytes, huge.free))
}

/// The refusal of `huge_pages` when `needed` huge pages of `page` bytes are wanted and only
/// `free` are free.
fn huge_refusal(needed: u64, page: u64, free: u64) -> Error {
    Error::invalid(
        "huge_pages",
        format!(
            "`huge_pages` needs {needed} free huge page{} of {} but {free} {} free: reserve \
             {} as root with `echo {needed} > /proc/sys/vm/nr_hugepages`",
            if needed == 1 { "" } else { "s" },
            crate::units::bytes(u128::from(page)),
            if free == 1 { "is" } else { "are" },
            if needed == 1 { "it" } else { "them" },
        ),
    )
}

/// Configures and starts a [`Pool`].
///
/// ```no_run
/// use procpool::{Pool, StartMethod};
///
/// procpool::init();
/// let pool = Pool::builder()
///     .workers(8)
///     .inflight(4) // four chunks queued per worker: fewer round trips to wait on
///     .start(StartMethod::Fork) // from a single-threaded process: no exec, no handshake
///     .build()?;
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    options: PoolOptions,
}

impl From<PoolOptions> for PoolBuilder {
    fn from(options: PoolOptions) -> Self {
        PoolBuilder { options }
    }
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            workers: Machine::read().cores_logical,
            inflight: DEFAULT_INFLIGHT,
            inflight_auto: true,
            worker_exe: None,
            test_harness: false,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            supervision: Supervision::default(),
            start: StartMethod::Spawn,
            pin: false,
            observer: None,
            registry: Registry::builtin(),
            tune_allocator: true,
            raise_file_limit: true,
            huge_pages: false,
            start_in_background: false,
            max_chunks_per_worker: None,
            max_worker_rss: None,
        }
    }
}

impl PoolBuilder {
    /// Default number of chunks in flight per worker (see [`PoolBuilder::inflight`]).
    pub const DEFAULT_INFLIGHT: usize = DEFAULT_INFLIGHT;
    /// Default deadline for workers to connect back (see
    /// [`PoolBuilder::handshake_timeout`]).
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = DEFAULT_HANDSHAKE_TIMEOUT;
    /// The most chunks in flight per worker that [`PoolBuilder::inflight_auto`] chooses.
    pub const AUTO_MAX_INFLIGHT: usize = 16;

    /// Number of worker processes (default: the number of logical cores).
    pub fn workers(mut self, workers: usize) -> Self {
        self.options.workers = workers;
        self
    }

    /// A fixed number of chunks in flight per worker, for every job dispatched over the
    /// channels ([`Dispatch::Channel`]; default: chosen per job, see
    /// [`PoolBuilder::inflight_auto`]). The shared-memory queue, the default dispatch,
    /// sends no chunk messages and ignores it: each worker holds the one chunk it claimed.
    pub fn inflight(mut self, inflight: usize) -> Self {
        self.options.inflight = inflight;
        self.options.inflight_auto = false;
        self
    }

    /// Each job dispatched over the channels chooses its chunks in flight per worker (the
    /// default): it starts at
    /// [`PoolBuilder::DEFAULT_INFLIGHT`], times its first chunks, and when a chunk computes
    /// for less than a message's round trip costs, queues more per worker (at most
    /// [`PoolBuilder::AUTO_MAX_INFLIGHT`]), so a worker never waits for its next chunk.
    pub fn inflight_auto(mut self) -> Self {
        self.options.inflight = DEFAULT_INFLIGHT;
        self.options.inflight_auto = true;
        self
    }

    /// The executable workers run (default: [`std::env::current_exe`]). It must call
    /// [`crate::init`] (or [`crate::init_with`]) first thing in `main`.
    pub fn worker_exe(mut self, exe: impl Into<PathBuf>) -> Self {
        self.options.worker_exe = Some(exe.into());
        self
    }

    /// Workers run this test binary through the hidden test that
    /// [`enable_test_support!`](crate::enable_test_support) defines, instead of
    /// re-executing a `main` that calls [`crate::init`]: how a custom workload is tested
    /// across real worker processes under plain `cargo test`. See the macro.
    pub fn test_harness(mut self) -> Self {
        self.options.test_harness = true;
        self
    }

    /// How long workers may take to start and connect back (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.options.handshake_timeout = timeout;
        self
    }

    /// How workers are started (default [`StartMethod::Spawn`]).
    pub fn start(mut self, start: StartMethod) -> Self {
        self.options.start = start;
        self
    }

    /// Pins each worker to one CPU (`sched_setaffinity`), dealt round-robin over the CPUs
    /// this process may use (default: not pinned).
    pub fn pin(mut self, pin: bool) -> Self {
        self.options.pin = pin;
        self
    }

    /// How to handle dead, hung and interrupted workers (default [`Supervision::default`]).
    pub fn supervision(mut self, supervision: Supervision) -> Self {
        self.options.supervision = supervision;
        self
    }

    /// Retries per chunk (default [`Supervision::DEFAULT_RETRIES`]).
    pub fn retries(mut self, retries: u32) -> Self {
        self.options.supervision.retries = retries;
        self
    }

    /// Per-chunk time limit (default: none).
    pub fn chunk_timeout(mut self, timeout: Duration) -> Self {
        self.options.supervision.chunk_timeout = Some(timeout);
        self
    }

    /// Who hears of the pool's progress and of lost workers (default: nobody; the pool
    /// prints nothing itself). See [`Observer`].
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.options.observer = Some(observer);
        self
    }

    /// The workloads that workers started with [`StartMethod::Fork`] can run (default: the
    /// built-ins). Spawned workers re-execute the worker binary and serve the registry that
    /// binary hands to [`crate::init_with`]; give the pool the same one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.options.registry = registry;
        self
    }

    /// Whether [`build`](Self::build) tunes glibc's allocator for this process (default:
    /// yes). A process-wide change: freed blocks up to 64 MiB are kept for reuse and
    /// blocks up to 4 MiB come from the heap rather than a fresh `mmap` each, because
    /// ipc-channel allocates a receive buffer of a few hundred KiB for every message and
    /// would otherwise pay page faults for each. Workers always do this for themselves.
    pub fn tune_allocator(mut self, tune: bool) -> Self {
        self.options.tune_allocator = tune;
        self
    }

    /// Backs the shared region with huge pages (default off): one page fault per huge page
    /// (2 MiB here) instead of one per 4 KiB page, which is what limits memory-bound jobs
    /// across processes. Reserved huge pages (`MFD_HUGETLB`) when enough are free in
    /// `/proc/sys/vm/nr_hugepages`; else, where the kernel gives shared memory transparent
    /// huge pages (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` set to `advise`,
    /// `within_size` or `always`), an ordinary region every process advises
    /// `MADV_HUGEPAGE`; else [`PoolBuilder::build`] (and, for reserved pages, each job)
    /// refuses with [`Error::InvalidInput`] naming `/proc/sys/vm/nr_hugepages` and the
    /// pages needed.
    pub fn huge_pages(mut self, huge: bool) -> Self {
        self.options.huge_pages = huge;
        self
    }

    /// Whether [`build`](Self::build) may raise this process's soft limit on open files
    /// (`ulimit -n`) up to the hard limit when the workers need more descriptors than it
    /// allows, about 4 per worker (default: yes). A process-wide change; with `false`, too
    /// low a limit is refused with an error naming it.
    pub fn raise_file_limit(mut self, raise: bool) -> Self {
        self.options.raise_file_limit = raise;
        self
    }

    /// Whether [`build`](Self::build) waits for every worker (the default) or only for as
    /// many as this process may use CPUs (with [`StartMethod::Spawn`]). The others are
    /// started by the first job while the ready ones already compute, and join it as each
    /// connects: with hundreds of workers, the work no longer waits for the last one to
    /// start. Until then their [`Pool::pids`] are 0. A worker that dies while starting
    /// counts as a restart of that job.
    pub fn start_in_background(mut self, background: bool) -> Self {
        self.options.start_in_background = background;
        self
    }

    /// Replaces each worker process after it has run `chunks` chunks (Python's
    /// `maxtasksperchild`): a leak in the kernel, or in a library it calls, lasts at most
    /// that long. The worker finishes its chunk, leaves, and a fresh process takes its slot
    /// while the others go on; this is a *recycle*, not a death: nothing is retried and no
    /// restart is counted ([`JobStats::recycles`]).
    pub fn max_chunks_per_worker(mut self, chunks: u64) -> Self {
        self.options.max_chunks_per_worker = Some(chunks);
        self
    }

    /// Replaces a worker process, between chunks, once its resident memory passes `bytes`
    /// (loky's memory cap): checked by the worker after each chunk, from `/proc/self/statm`.
    pub fn max_worker_rss(mut self, bytes: u64) -> Self {
        self.options.max_worker_rss = Some(bytes);
        self
    }

    /// The stop request handle checked while jobs run.
    pub fn interrupt(mut self, interrupt: Interrupt) -> Self {
        self.options.supervision.interrupt = interrupt;
        self
    }

    /// Starts the workers. On failure none is left running.
    pub fn build(self) -> Result<Pool> {
        refuse_to_recurse()?;
        check_counts(self.options.workers, self.options.inflight, None)?;
        let most = max_inflight();
        if self.options.inflight > most {
            return Err(Error::invalid(
                "inflight",
                format!(
                    "`inflight` {} is more chunk messages than a worker's channel holds \
                     without blocking here (at most {most}, from net.core.wmem_default): use \
                     at most {most}",
                    self.options.inflight
                ),
            ));
        }
        if self.options.handshake_timeout.is_zero() {
            return Err(Error::invalid(
                "handshake_timeout",
                "`handshake_timeout` 0s leaves workers no time to start: use at least 1ms (the \
                 default is 10s)",
            ));
        }
        if self.options.max_chunks_per_worker == Some(0) {
            return Err(Error::invalid(
                "max_chunks_per_worker",
                "`max_chunks_per_worker` 0 would retire every worker before its first chunk: \
                 use at least 1, or leave it unset",
            ));
        }
        if self.options.max_worker_rss == Some(0) {
            return Err(Error::invalid(
                "max_worker_rss",
                "`max_worker_rss` 0 would retire every worker after its first chunk: give a \
                 size such as 512MiB, or leave it unset",
            ));
        }
        if self.options.supervision.chunk_timeout == Some(Duration::ZERO) {
            return Err(Error::invalid(
                "chunk_timeout",
                "`chunk_timeout` 0s kills every chunk: use at least 1ms, or leave \
                 `chunk_timeout` unset for no limit",
            ));
        }
        crate::engine::limits::check_worker_limits(
            self.options.workers,
            self.options.raise_file_limit,
        )?;
        if self.options.tune_allocator {
            crate::engine::sys::keep_freed_memory();
        }
        let dir = PrivateDir::create()?;
        let exe = spawn::WorkerExe {
            path: match self.options.worker_exe {
                Some(exe) => exe,
                None => std::env::current_exe()?,
            },
            via_test: self.options.test_harness,
            spawner: match self.options.start {
                StartMethod::Spawn => Some(Arc::new(spawn::Spawner::new()?)),
                // Fork needs this process single-threaded: the spawner (for replacements)
                // starts once the workers are forked.
                StartMethod::Fork => None,
            },
        };
        let control_len = crate::engine::control::control_len(self.options.workers);
        let backing = if self.options.huge_pages {
            Some(huge_pages_for(0)?)
        } else {
            None
        };
        let region = match backing {
            Some(HugeBacking::Hugetlb(page)) => SharedRegion::with_control_huge(control_len, page)?,
            _ => SharedRegion::with_control(control_len)?,
        };
        let control = region.control()?;
        if backing == Some(HugeBacking::Advise) {
            control.set_huge_advise();
        }
        let pin = if self.options.pin {
            crate::engine::sys::allowed_cpus()
        } else {
            Vec::new()
        };
        let max_restarts = self
            .options
            .supervision
            .max_restarts
            .unwrap_or_else(|| default_max_restarts(self.options.workers));
        let mut start_deaths = Vec::new();
        let began = Instant::now();
        // In the background, only the first workers are waited for here.
        let now = if self.options.start_in_background && self.options.start == StartMethod::Spawn {
            let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
            self.options.workers.min(cpus)
        } else {
            self.options.workers
        };
        let started = match self.options.start {
            StartMethod::Spawn => spawn::start_workers(
                &exe,
                &dir,
                region.raw_fd(),
                0..now,
                self.options.handshake_timeout,
                &pin,
                max_restarts,
                &self.options.supervision.interrupt,
                &mut start_deaths,
            )?,
            StartMethod::Fork => spawn::fork_workers(
                region.raw_fd(),
                0..self.options.workers,
                &pin,
                &self.options.registry,
            )?,
        };
        let mut exe = exe;
        if exe.spawner.is_none() {
            // Replacements are spawned, from a thread of the pool's own (see `Spawner`).
            exe.spawner = Some(Arc::new(spawn::Spawner::new()?));
        }
        let spawn_time = began.elapsed();

        let (waker, waker_rx) = ipc_channel::ipc::channel::<()>()?;
        let mut set = IpcReceiverSet::new()?;
        let waker_rid = set.add(waker_rx)?;
        let mut pool = Pool {
            control,
            waker,
            waker_rid,
            specs: spec::Specs::default(),
            reduced: Vec::new(),
            next_posting: 1,
            dir,
            start_deaths,
            start: self.options.start,
            pin,
            exe,
            handshake_timeout: self.options.handshake_timeout,
            supervision: self.options.supervision,
            observer: self.options.observer,
            max_restarts,
            set,
            by_receiver: HashMap::new(),
            workers: Vec::with_capacity(started.len()),
            region,
            mapping: None,
            inflight: self.options.inflight,
            inflight_auto: self.options.inflight_auto,
            spawn_time,
            next_job: 0,
            broken: false,
            handshake_ipc: (0, 0),
            workloads: Vec::new(),
            memory_checked: 0,
            recycle: (
                self.options.max_chunks_per_worker.unwrap_or(0),
                self.options.max_worker_rss.unwrap_or(0),
            ),
            job_inputs: Vec::new(),
            input_sends: 0,
            death_scan: Instant::now(),
            job_stop: quiesce::JobStop::default(),
            draining: None,
        };
        for s in started {
            pool.workers.push(WorkerSlot::empty(s.id));
            pool.install(s)?;
        }
        for id in now..self.options.workers {
            pool.workers.push(WorkerSlot {
                unspawned: true,
                ..WorkerSlot::empty(id)
            });
        }
        Ok(pool)
    }
}

/// How often the dispatch loops ask the workers' processes whether they ended.
const DEATH_SCAN: Duration = Duration::from_millis(2);

/// A worker process as the parent sees it. The slot (its id) outlives the process: a
/// replacement takes the same id.
struct WorkerSlot {
    id: usize,
    pid: u32,
    /// `None` once reaped.
    child: Option<Process>,
    /// `None` once told to stop, or dead.
    tx: Option<IpcSender<ToWorker>>,
    /// Receiver id in the pool's set.
    rid: Option<u64>,
    /// The thread forwarding the worker's output.
    output: Option<spawn::Forwarder>,
    /// A replacement on its way through the handshake.
    starting: Option<spawn::Starting>,
    /// The job spec this process was last sent (0: none).
    spec_sent: u64,
    /// Not started yet (a pool started in the background): a job starts it.
    unspawned: bool,
    /// It said it reached its recycling limit; its exit is not a death.
    retiring: bool,
    /// Chunks this process ran (channel dispatch: its `Done` arrived), for the recycling
    /// limit. Counted as the worker counts them: a chunk it skipped (its job stopped
    /// early) does not count.
    ran_chunks: u64,
    /// Our end of the process's private socket for input descriptors.
    inputs_socket: Option<OwnedFd>,
    /// The inputs (ids) the process holds: those of the last spec it was sent.
    inputs_held: Vec<u64>,
}

impl WorkerSlot {
    fn empty(id: usize) -> Self {
        WorkerSlot {
            id,
            pid: 0,
            child: None,
            tx: None,
            rid: None,
            output: None,
            starting: None,
            spec_sent: 0,
            unspawned: false,
            retiring: false,
            ran_chunks: 0,
            inputs_socket: None,
            inputs_held: Vec::new(),
        }
    }

    /// Waits up to `grace` for the process to exit (then kills it), reaps it (which ends
    /// its process group: anything a kernel started there dies with it), and copies its
    /// last output lines for [`spawn::OUTPUT_DRAIN`] at most.
    fn reap(&mut self, grace: Duration) -> ExitCause {
        self.tx = None;
        let cause = match self.child.take() {
            Some(mut child) => spawn::reap_within(&mut child, grace),
            None => ExitCause::Unknown,
        };
        if let Some(output) = self.output.take() {
            output.finish(Instant::now() + spawn::OUTPUT_DRAIN);
        }
        cause
    }
}

/// A worker that died during a job, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
/// an interrupt ([`Interrupt`]), by workers lost beyond the limits
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
    /// Workers that died while the pool started, charged to its first job.
    start_deaths: Vec<Death>,
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
    /// Messages and bytes of the handshakes, not yet charged to a job.
    handshake_ipc: (u64, u64),
    /// What the workers can run (name, element size), from their `Hello`.
    workloads: Vec<Registered>,
    /// The largest region whose memory was checked against the machine.
    memory_checked: u128,
    /// Recycling limits: chunks per worker process, resident bytes (0: none).
    recycle: (u64, u64),
    /// The last reducing job's encoded chunk accumulators, as the dispatch loop found them.
    reduced: Vec<ReducedChunk>,
    /// The shared inputs of the job in progress, in the order its spec lists them: their
    /// descriptors go to each worker that does not hold them yet.
    job_inputs: Vec<Arc<Sealed>>,
    /// Batches of input descriptors sent during the job in progress.
    input_sends: u64,
    /// When the dispatch loops look for ended workers next ([`Pool::ended_workers`]).
    death_scan: Instant,
    /// The cancel token and deadline of the job in progress.
    job_stop: quiesce::JobStop,
    /// The last posting, closed without waiting for its workers to leave it: the next job
    /// waits ([`Pool::settle`]).
    draining: Option<quiesce::Draining>,
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

/// Where streamed windows go (see [`Pool::stream_with`]): called once per window, in
/// order, with the window's first index and its bytes (little-endian elements).
pub trait WindowSink {
    /// Takes one complete window. An error stops the job.
    fn window(&mut self, start: u64, bytes: &[u8]) -> std::result::Result<(), String>;
}

/// Options of one job.
///
/// ```no_run
/// use procpool::{JobOptions, Pool, Schedule};
/// use procpool::workload::Primes;
///
/// procpool::init();
/// let mut pool = Pool::builder().workers(4).build()?;
/// // Primes cost more as i grows: hand out small chunks to whoever is free.
/// let options = JobOptions {
///     chunk_size: Some(10_000),
///     schedule: Schedule::Dynamic,
///     ..JobOptions::default()
/// };
/// let run = pool.run_with(&Primes, 1_000_000, &options)?;
/// assert_eq!(run.results().iter().map(|&p| u64::from(p)).sum::<u64>(), 78_498);
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// Chunk length in elements (default: about 4 chunks per worker, one block per worker
    /// with the static schedule, about 64 per worker for workloads that wait).
    pub chunk_size: Option<u64>,
    /// Measure the first chunks and choose the chunk length from them (dynamic and guided).
    pub auto_chunk: bool,
    /// How chunks are handed out.
    pub schedule: Schedule,
    /// How results come back.
    pub transport: Transport,
    /// How chunks reach the workers (default: the shared-memory queue).
    pub dispatch: Dispatch,
    /// Faults to inject (see [`Fault`](crate::Fault)).
    pub faults: Vec<Fault>,
    /// Record the job's timeline in [`JobStats::trace`]: every chunk attempt (worker,
    /// attempt, start and end), deaths, restarts, retries, timeouts and window writes.
    /// Off by default; when off, nothing more is written per chunk.
    pub trace: bool,
    /// Stops the job when cancelled, from any thread, with [`Error::Cancelled`]; the pool
    /// keeps its workers (see [`Cancel`](crate::Cancel) and [`Pool`]).
    pub cancel: Option<crate::engine::cancel::Cancel>,
    /// Stops the job once it has run this long (from the call) with
    /// [`Error::DeadlineExceeded`]; the pool keeps its workers (see [`Pool`]). It bounds
    /// the pool's job only: the caller's use of the results comes after.
    pub deadline: Option<Duration>,
}

/// What `--chunk-size auto` measured and chose.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// ([`PoolBuilder::max_chunks_per_worker`], [`PoolBuilder::max_worker_rss`]).
    pub recycles: u64,
    /// Chunks handed out again because their worker died.
    pub retried_chunks: u64,
    /// Every worker death, in order.
    pub deaths: Vec<Death>,
    /// The job's reduction as JSON, when it reduced ([`Pool::reduce`],
    /// [`Pool::run_and_reduce_with`]): the chunks' accumulators combined in chunk order.
    pub reduction: Option<serde_json::Value>,
    /// Chunks in flight per worker at the end of the job: the depth chosen (see
    /// [`PoolBuilder::inflight_auto`]) or the fixed one.
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
    /// Chunks handed to the callback of [`Pool::for_each_chunk`] (0 for other jobs).
    pub chunks_delivered: u64,
    /// The callback of [`Pool::for_each_chunk`] returned `Break`: the job stopped before
    /// its end. `chunks` then counts the chunks that were done (`reduction` adds up only
    /// theirs), and the rest of the output is not computed.
    pub stopped_early: bool,
    /// The job's timeline, when [`JobOptions::trace`] asked for it.
    pub trace: Option<Trace>,
}

/// The outcome of [`Pool::run`]: the results, still in shared memory, and the measurements.
///
/// Borrowing the pool keeps the results valid: the next job needs `&mut Pool`.
pub struct PoolRun<'pool, T> {
    pool: &'pool Pool,
    stats: JobStats,
    _elem: std::marker::PhantomData<T>,
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

    /// The job's chunk accumulators as the workers left them, when it reduced.
    pub(crate) fn reduced_chunks(&self) -> &[ReducedChunk] {
        &self.pool.reduced
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
        let stats = self.job(workload, n, options, None, Want::OUTPUT, None)?;
        Ok(PoolRun {
            pool: self,
            stats,
            _elem: std::marker::PhantomData,
        })
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
        let stats = self.job(workload, n, options, None, want, None)?;
        Ok(PoolRun {
            pool: self,
            stats,
            _elem: std::marker::PhantomData,
        })
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
        self.job(
            workload,
            n,
            options,
            Some((layout, sink)),
            Want::OUTPUT,
            None,
        )
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
        let mut stats = self.job(workload, n, options, None, want, None)?;
        let value = self.combine_reduced(workload, n, &mut stats)?;
        Ok(Reduced { value, stats })
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
        let mut stats = self.job(workload, n, options, None, want, None)?;
        let value = self.combine_reduced(workload, n, &mut stats)?;
        let run = PoolRun {
            pool: self,
            stats,
            _elem: std::marker::PhantomData,
        };
        Ok((run, value))
    }

    /// Combines the last job's accumulators in chunk order into `W::Acc`, and records it
    /// as JSON in `stats`.
    fn combine_reduced<W: Reduce>(
        &mut self,
        workload: &W,
        n: u64,
        stats: &mut JobStats,
    ) -> Result<W::Acc> {
        let parts = in_chunk_order(std::mem::take(&mut self.reduced), n)?;
        let value =
            crate::workload::decode_combined(workload, &mut parts.iter().map(|p| p.acc.as_slice()))
                .map_err(Error::Ipc)?;
        stats.reduction = Some(serde_json::to_value(&value).unwrap_or(serde_json::Value::Null));
        self.reduced = parts;
        Ok(value)
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
        self.each_job(workload, n, options, order, Want::OUTPUT, &mut visit)
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
        let mut stats = self.each_job(workload, n, options, order, want, &mut visit)?;
        if let Some(index) = undecodable {
            return Err(Error::Ipc(format!(
                "chunk {index} of `{}` came without an accumulator that decodes",
                W::NAME
            )));
        }
        if stats.stopped_early {
            return Ok((stats, None));
        }
        let value = self.combine_reduced(workload, n, &mut stats)?;
        Ok((stats, Some(value)))
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
    ) -> Result<JobStats> {
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
    ) -> Result<JobStats> {
        let began = Instant::now();
        let elem_size = std::mem::size_of::<W::Output>();
        self.check_registered::<W>(want.reduce_slot > 0)?;
        check_deadline(options.deadline)?;
        self.reduced.clear();
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
        // Each `Input` field writes an index and lists itself; the data is never encoded.
        // `Param` fields too, each in a memfd of its own, encoded only when it changed.
        let (params, encoded) =
            crate::engine::input::encoding_params(&mut self.specs.param_cache, || {
                crate::engine::protocol::encode(workload)
            });
        let params = params.map_err(|e| Error::Ipc(format!("cannot encode the workload: {e}")))?;
        let (mut inputs, param_values) = (encoded.inputs, encoded.param_bytes);
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
        let input_refs: Vec<InputRef> = inputs
            .iter()
            .map(|s| InputRef {
                id: s.id(),
                bytes: s.len() as u64,
                elem_size: s.elem_size() as u32,
            })
            .collect();
        let input_bytes = input_refs.iter().map(|i| i.bytes).sum::<u64>() - param_values;
        let param_bytes = params.len() as u64 + param_values;
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

        // A region that is already the right size (or a little larger) is used again as it
        // is: every element of the job is written before it is read, so nothing needs
        // zeroing. Otherwise the region is emptied (its pages given back) and resized.
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
        let spec = self
            .specs
            .complete(spec, params, &mut inputs)
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
        self.job_inputs = inputs;
        self.input_sends = 0;
        let result = match options.dispatch {
            Dispatch::Channel => self.dispatch(spec, n, dispenser, options, stream, each),
            Dispatch::Queue => self.dispatch_queue(spec, n, dispenser, options, stream, each),
        };
        self.job_stop = quiesce::JobStop::default();
        // The workers keep their mappings; the parent's own `Input` values keep theirs.
        self.job_inputs.clear();
        let result = result.map(|mut stats| {
            stats.input_bytes = input_bytes;
            stats.param_bytes = param_bytes;
            stats.input_sends = self.input_sends;
            stats
        });
        let completed = result.is_ok();
        observe::tell(&self.observer, Event::JobEnded { completed });
        match result {
            Ok(stats) => Ok(stats),
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
            recycle_chunks: self.recycle.0,
            recycle_rss: self.recycle.1,
            ..Default::default()
        };
        self.control.open(&posting, 0);
        id
    }

    /// Sends `spec` to every connected worker that does not have it yet.
    fn send_spec(&mut self, spec: &JobSpec) -> (u64, u64) {
        let mut sent = (0, 0);
        // A few hundred bytes at most (large parameters travel in a sealed memfd, among
        // the inputs): made and measured once, cloned per worker.
        let job = ToWorker::Job(spec.clone());
        let size = crate::engine::protocol::wire_size(&job);
        for (slot, w) in self.workers.iter_mut().enumerate() {
            if w.spec_sent == spec.spec_id {
                continue;
            }
            let Some(tx) = w.tx.as_ref() else { continue };
            // First the descriptors of the inputs it does not hold yet, on its private
            // socket; it takes them right after the spec, and then holds exactly the
            // spec's inputs (as we note here).
            let new: Vec<_> = self
                .job_inputs
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
                sent = (sent.0 + 1, sent.1 + crate::engine::sealed::BATCH_BYTES);
                self.input_sends += 1;
            }
            let msg = job.clone();
            // Wake it to read the spec: a large one fills the socket and the send waits
            // until the worker reads, which it would otherwise do only when its sleep ends.
            self.control.announce_spec(slot, spec.spec_id);
            // A worker that is gone is noticed by the dispatch loop (its channel closes).
            if tx.send(msg).is_ok() {
                w.spec_sent = spec.spec_id;
                w.inputs_held = spec.inputs.iter().map(|i| i.id).collect();
                sent = (sent.0 + 1, sent.1 + size);
            }
        }
        sent
    }

    /// At the end of a job, the workers that said they retire but have not been replaced
    /// yet: waits for each to exit and starts its successor (before the next job, not
    /// during it). Returns how many.
    fn settle_retired(&mut self) -> Result<u64> {
        let mut settled = 0;
        for w in 0..self.workers.len() {
            if !self.workers[w].retiring {
                continue;
            }
            if let Some(tx) = self.workers[w].tx.take() {
                let _ = tx.send(ToWorker::Shutdown);
            }
            self.retire(w);
            self.respawn(w)?;
            settled += 1;
        }
        Ok(settled)
    }

    /// Closes posting `id` and waits until no live worker is inside it, so that the next
    /// posting's fields can be written. A worker still inside after the grace period (a
    /// stopped process) is killed; the next job starts a fresh one in its slot.
    fn close_posting(&mut self, id: u64) {
        self.control.close();
        self.await_leaving(id);
    }

    /// Waits until no live worker is inside posting `id` (closed already). One still inside
    /// after the grace period is killed and reaped; returned as (slot, pid), its slot marked
    /// for a fresh process.
    fn await_leaving(&mut self, id: u64) -> Vec<(usize, u32)> {
        let deadline = Instant::now()
            .checked_add(self.supervision.grace)
            .unwrap_or_else(spawn::far_future);
        let mut spins = 0u32;
        loop {
            // A process that has exited leaves nothing to wait for (it is replaced as dead).
            let inside: Vec<usize> = (0..self.workers.len())
                .filter(|&w| self.control.inside(w, id))
                .filter(|&w| {
                    self.workers[w]
                        .child
                        .as_ref()
                        .is_some_and(|c| !c.has_exited())
                })
                .collect();
            if inside.is_empty() {
                return Vec::new();
            }
            if Instant::now() >= deadline {
                let mut killed = Vec::new();
                for w in inside {
                    killed.push((w, self.workers[w].pid));
                    crate::engine::sys::kill_hard(self.workers[w].pid);
                    let slot = &mut self.workers[w];
                    if let Some(rid) = slot.rid.take() {
                        self.by_receiver.remove(&rid);
                    }
                    slot.reap(Duration::from_secs(1));
                    // The next job starts a fresh process in the slot.
                    slot.unspawned = true;
                    self.control.reset_slot(w);
                }
                return killed;
            }
            spins += 1;
            if spins < 1000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// Stops every worker and reaps it: a Shutdown message, then after a grace period
    /// SIGTERM, then after another SIGKILL (GNU parallel's `--termseq` idea). Returns how
    /// many workers needed SIGTERM and how many of those SIGKILL.
    fn stop_all(&mut self) -> (usize, usize) {
        let grace = self.supervision.grace;
        // Workers waiting on the queue see this; those inside a channel job, the message.
        self.control.shut_down();
        for w in &mut self.workers {
            if let Some(mut starting) = w.starting.take() {
                starting.abort();
            }
            if let Some(tx) = w.tx.take() {
                let _ = tx.send(ToWorker::Shutdown);
            }
        }
        let mut needed = (0, 0);
        let mut running = self.wait_exits(grace);
        if !running.is_empty() {
            needed.0 = running.len();
            for &w in &running {
                crate::engine::sys::terminate(self.workers[w].pid);
            }
            running = self.wait_exits(grace);
        }
        if !running.is_empty() {
            needed.1 = running.len();
            for &w in &running {
                crate::engine::sys::kill_hard(self.workers[w].pid);
            }
        }
        // Every worker has exited or is killed: their last lines are copied in one short
        // moment, not one after the other.
        let drain = Instant::now() + spawn::OUTPUT_DRAIN;
        for output in self.workers.iter_mut().filter_map(|w| w.output.as_mut()) {
            output.stop_by(drain);
        }
        for w in &mut self.workers {
            w.reap(Duration::ZERO);
        }
        self.by_receiver.clear();
        needed
    }

    /// Waits up to `grace` for every worker to exit, reaping those that do. Returns the
    /// indices of those still running.
    fn wait_exits(&mut self, grace: Duration) -> Vec<usize> {
        let deadline = Instant::now()
            .checked_add(grace)
            .unwrap_or_else(spawn::far_future);
        loop {
            let mut running = Vec::new();
            for (i, w) in self.workers.iter_mut().enumerate() {
                if let Some(child) = w.child.as_mut() {
                    match child.try_wait() {
                        // Its output is stopped with the others' in `stop_all`.
                        Ok(Some(_)) | Err(_) => w.child = None,
                        Ok(None) => running.push(i),
                    }
                }
            }
            if running.is_empty() || Instant::now() >= deadline {
                return running;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Registers a started worker in its slot (same id) and the receiver set.
    fn install(&mut self, s: spawn::Started) -> Result<()> {
        self.handshake_ipc.0 += s.handshake_ipc.0;
        self.handshake_ipc.1 += s.handshake_ipc.1;
        let slot_index = self
            .workers
            .iter()
            .position(|w| w.id == s.id)
            .expect("a slot for every worker id");
        let rid = self.set.add(s.rx)?;
        self.by_receiver.insert(rid, slot_index);
        if self.workloads.is_empty() {
            self.workloads = s.workloads;
        }
        let slot = &mut self.workers[slot_index];
        slot.spec_sent = 0;
        slot.ran_chunks = 0;
        slot.inputs_socket = Some(s.inputs_socket);
        slot.inputs_held.clear();
        slot.pid = s.pid;
        slot.child = Some(s.child);
        slot.tx = Some(s.tx);
        slot.rid = Some(rid);
        slot.output = s.output;
        Ok(())
    }

    /// Starts a fresh set of workers after a failed job stopped them all. They are spawned
    /// whatever the start method: by now this process has threads, so it may not fork.
    fn revive(&mut self) -> Result<()> {
        self.set = IpcReceiverSet::new()?;
        let (waker, waker_rx) = ipc_channel::ipc::channel::<()>()?;
        self.waker_rid = self.set.add(waker_rx)?;
        self.waker = waker;
        self.by_receiver.clear();
        // The new workers must not see the old set's shutdown.
        self.control = self.region.control()?;
        self.control.restart();
        self.draining = None;
        for w in 0..self.workers.len() {
            self.respawn(w)?;
        }
        self.broken = false;
        Ok(())
    }

    /// The workers whose process ended, as (slot, pid), for a dispatch loop to replace.
    ///
    /// Asked of each process itself (`waitid` without reaping it, so that its process group
    /// is still its own when the replacement ends it), not only of its channel: a process
    /// a kernel forked inherits the worker's channel and keeps it open after the worker
    /// died, so no closed channel ever tells. Looks at most once per [`DEATH_SCAN`]. A
    /// worker's last messages arrive before its exit: those waiting are handed to the
    /// loop's `handle` first, so that a worker leaving after its recycling limit (it said
    /// `Retiring`) is not counted, nor one whose closed channel was just handled.
    pub(super) fn ended_workers<J>(
        &mut self,
        job: &mut J,
        handle: fn(&mut Pool, IpcSelectionResult, &mut J) -> Result<()>,
    ) -> Result<Vec<(usize, u32)>> {
        let now = Instant::now();
        if now < self.death_scan {
            return Ok(Vec::new());
        }
        self.death_scan = now + DEATH_SCAN;
        let counted = |w: &WorkerSlot| w.starting.is_none() && !w.retiring && w.child.is_some();
        let ended: Vec<(usize, u32)> = self
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| counted(w))
            .filter(|(_, w)| w.child.as_ref().is_some_and(Process::has_exited))
            .map(|(i, w)| (i, w.pid))
            .collect();
        if ended.is_empty() {
            return Ok(ended);
        }
        match self.set.try_select() {
            Ok(events) => {
                for event in events {
                    handle(self, event, job)?;
                }
            }
            Err(TrySelectError::Empty) => {}
            Err(TrySelectError::IoError(e)) => {
                return Err(Error::Ipc(format!("reading the workers' messages: {e}")));
            }
        }
        Ok(ended
            .into_iter()
            .filter(|&(w, pid)| self.workers[w].pid == pid && counted(&self.workers[w]))
            .collect())
    }

    /// Replaces the workers that died between jobs (killed from outside, or ended with the
    /// thread that started them) before the job begins, so that none is blamed for a chunk
    /// it never received. Their deaths count as this job's restarts.
    fn replace_the_dead(&mut self) -> Result<()> {
        for w in 0..self.workers.len() {
            let slot = &mut self.workers[w];
            let Some(child) = slot.child.as_mut() else {
                continue;
            };
            let Ok(Some(exit)) = child.try_wait() else {
                continue;
            };
            let (id, pid) = (slot.id, slot.pid);
            if let Some(rid) = slot.rid.take() {
                self.by_receiver.remove(&rid);
            }
            slot.reap(Duration::ZERO);
            let new_pid = self.respawn(w)?;
            self.start_deaths.push(Death {
                id,
                pid,
                cause: format!("{exit} between jobs"),
                chunk: None,
                replaced_by: Some(new_pid),
            });
        }
        Ok(())
    }

    /// Spawns a worker for slot `w` and waits for its handshake (within the restart limit,
    /// like a start); returns its pid.
    fn respawn(&mut self, w: usize) -> Result<u32> {
        self.workers[w].unspawned = false;
        self.control.reset_slot(w);
        let id = self.workers[w].id;
        let mut deaths = Vec::new();
        let started = spawn::start_workers(
            &self.exe,
            &self.dir,
            self.region.raw_fd(),
            id..id + 1,
            self.handshake_timeout,
            &self.pin,
            self.max_restarts,
            &self.supervision.interrupt,
            &mut deaths,
        )?;
        self.start_deaths.extend(deaths);
        let mut pid = 0;
        for s in started {
            pid = s.pid;
            self.install(s)?;
        }
        Ok(pid)
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
                let known: Vec<&str> = self.workloads.iter().map(|r| r.name.as_str()).collect();
                Err(Error::invalid_input(format!(
                    "workload `{name}` is not registered in the workers' binary (it has: {}): \
                     register it (Registry::builtin().register::<YourWorkload>()) and give that \
                     registry to procpool::init_with first thing in the workers' main",
                    known.join(", ")
                )))
            }
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
