//! What a pool and a job are built from: the builder, its options and their checks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use ipc_channel::ipc::IpcReceiverSet;
use serde::Serialize;

use super::observe::Observer;
use super::private_dir::PrivateDir;
use super::spawn::{self, TEST_WORKER_ENV};
use super::{Charges, Ipc, Pool, Recycle, WorkerSlot};
use crate::engine::control::Control;
use crate::engine::fault::Fault;
use crate::engine::interrupt::Interrupt;
use crate::engine::limits::Machine;
use crate::engine::protocol::{Dispatch, Transport};
use crate::engine::schedule::Schedule;
use crate::engine::shm::SharedRegion;
use crate::error::{Error, Result};
use crate::workload::Registry;

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

/// Set when `enable_test_support!`'s constructor ran: this process is a test binary with
/// procpool's worker entry.
pub(crate) static TEST_SUPPORT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// What to say of a worker that exited before it reached procpool's entry in `exe`: a
/// test binary running itself (one with `enable_test_support!`, or one cargo built into
/// `deps/` as `name-<hash>`) needs [`PoolBuilder::test_harness`]; a program, `init` first
/// thing in `main`.
pub(crate) fn forgotten_entry(exe: &std::path::Path) -> String {
    let itself = std::env::current_exe().is_ok_and(|ours| ours == exe);
    let test_binary = itself
        && (TEST_SUPPORT.load(std::sync::atomic::Ordering::Relaxed) || cargo_test_binary(exe));
    match test_binary {
        true => "; this is a test binary, whose main belongs to the test harness: build the \
                 pool with PoolBuilder::test_harness() and put \
                 procpool::enable_test_support!(registry) at the top of the test file"
            .to_string(),
        false => {
            "; if this is your own binary, call procpool::init() first thing in main".to_string()
        }
    }
}

/// Whether `exe` is where cargo puts a test binary: `…/deps/<name>-<16 hex digits>`.
fn cargo_test_binary(exe: &std::path::Path) -> bool {
    let in_deps = exe
        .parent()
        .and_then(|dir| dir.file_name())
        .is_some_and(|dir| dir == "deps");
    let hashed = exe
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.rsplit_once('-'))
        .is_some_and(|(_, hash)| hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()));
    in_deps && hashed
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

/// A chunk length, when one is given, is at least 1.
pub(super) fn check_chunk_size(chunk_size: Option<u64>) -> Result<()> {
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
///
/// The default is [`StartMethod::ForkServer`] where the program has a fork server (it
/// called [`init`](crate::init) first thing in `main`), else [`StartMethod::Spawn`]; a
/// pool says which one it used in [`Pool::start_method`](crate::Pool::start_method).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StartMethod {
    /// Re-execute the worker binary and connect back over an ipc-channel one-shot server
    /// (like Python's `spawn`): a fresh process image, about a millisecond per worker.
    Spawn,
    /// `fork` this process (like Python's `fork`): no exec and no handshake, a fraction of a
    /// millisecond per worker. Only from a single-threaded process; workers that replace
    /// dead ones come from the fork server (or are spawned without one), because by then
    /// the pool has threads of its own.
    Fork,
    /// Ask the program's fork server (like Python's `forkserver`, its default on Linux
    /// since 3.14): a small single-threaded process [`init`](crate::init) forked before
    /// anything else ran forks each worker, as a child of this process, from any thread
    /// and at any time: no exec, no handshake. Without a fork server (no `init`, another
    /// `worker_exe`), workers are spawned.
    #[default]
    ForkServer,
}

impl std::fmt::Display for StartMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StartMethod::Spawn => "spawn",
            StartMethod::Fork => "fork",
            StartMethod::ForkServer => "forkserver",
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
pub(super) fn huge_refusal(needed: u64, page: u64, free: u64) -> Error {
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
            start: StartMethod::ForkServer,
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
    /// across real worker processes under plain `cargo test`. With the default start
    /// method the workers come from the fork server the macro starts before `main`; they
    /// are spawned through the hidden test only without one (or with
    /// [`StartMethod::Spawn`]). A spawned test worker keeps `TMPDIR` pointed at the pool's
    /// private directory (it runs on a libtest thread, where changing the environment is
    /// not safe); a program's spawned worker, and every forked one, sees the user's. See
    /// the macro.
    pub fn test_harness(mut self) -> Self {
        self.options.test_harness = true;
        self
    }

    /// How long workers may take to start and connect back (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.options.handshake_timeout = timeout;
        self
    }

    /// How workers are started (default [`StartMethod::ForkServer`], which falls back to
    /// [`StartMethod::Spawn`] where the program has no fork server).
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
    /// restart is counted ([`JobStats::recycles`](crate::JobStats::recycles)).
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
        let options = self.options;
        options.validate()?;
        crate::engine::limits::check_worker_limits(options.workers, options.raise_file_limit)?;
        if options.tune_allocator {
            crate::engine::sys::keep_freed_memory();
        }
        let dir = PrivateDir::create()?;
        let mut exe = options.worker_exe()?;
        let (region, control) = options.region()?;
        let pin = if options.pin {
            crate::engine::sys::allowed_cpus()
        } else {
            Vec::new()
        };
        let max_restarts = options
            .supervision
            .max_restarts
            .unwrap_or_else(|| default_max_restarts(options.workers));
        let mut start_deaths = Vec::new();
        let began = Instant::now();
        // In the background, only the first workers are waited for here.
        let now = if options.start_in_background && options.effective_start() == StartMethod::Spawn
        {
            let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
            options.workers.min(cpus)
        } else {
            options.workers
        };
        let mut start = options.effective_start();
        let mut started = match start {
            StartMethod::Spawn => None,
            StartMethod::Fork => Some(spawn::fork_workers(
                region.raw_fd(),
                0..options.workers,
                &pin,
                &options.registry,
            )?),
            // A fork server that fails (gone, stopped) is reaped; the workers are spawned.
            StartMethod::ForkServer => {
                spawn::fork_via_server(region.raw_fd(), 0..now, &pin, options.handshake_timeout)
                    .ok()
            }
        };
        if started.is_none() {
            start = StartMethod::Spawn;
            started = Some(spawn::start_workers(
                &exe,
                &dir,
                region.raw_fd(),
                0..now,
                options.handshake_timeout,
                &pin,
                max_restarts,
                &options.supervision.interrupt,
                &mut start_deaths,
            )?);
        }
        let started = started.unwrap_or_default();
        if exe.spawner.is_none() && start != StartMethod::ForkServer {
            // Replacements are spawned, from a thread of the pool's own (see `Spawner`);
            // a fork server's pool starts that thread only if it ever has to spawn.
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
            specs: super::spec::Specs::default(),
            next_posting: 1,
            dir,
            charges: Charges {
                handshakes: Ipc::default(),
                deaths: start_deaths,
            },
            start,
            pin,
            exe,
            handshake_timeout: options.handshake_timeout,
            supervision: options.supervision,
            observer: options.observer,
            max_restarts,
            set,
            by_receiver: HashMap::new(),
            workers: Vec::with_capacity(options.workers),
            region,
            mapping: None,
            inflight: options.inflight,
            inflight_auto: options.inflight_auto,
            spawn_time,
            next_job: 0,
            broken: false,
            workloads: Vec::new(),
            memory_checked: 0,
            recycle: Recycle {
                chunks: options.max_chunks_per_worker.unwrap_or(0),
                rss: options.max_worker_rss.unwrap_or(0),
            },
            death_scan: Instant::now(),
            job_stop: super::quiesce::JobStop::default(),
            draining: None,
        };
        for s in started {
            pool.workers.push(WorkerSlot::empty(s.id));
            pool.install(s)?;
        }
        for id in now..options.workers {
            pool.workers.push(WorkerSlot {
                unspawned: true,
                ..WorkerSlot::empty(id)
            });
        }
        Ok(pool)
    }
}

impl PoolOptions {
    /// Checks the options before anything starts: every count at least 1, no more chunks
    /// in flight than a worker's channel holds, no zero deadline or limit. The error names
    /// the option and the fix; [`PoolBuilder::build`] refuses with it.
    pub fn validate(&self) -> Result<()> {
        check_counts(self.workers, self.inflight, None)?;
        let most = max_inflight();
        if self.inflight > most {
            return Err(Error::invalid(
                "inflight",
                format!(
                    "`inflight` {} is more chunk messages than a worker's channel holds \
                     without blocking here (at most {most}, from net.core.wmem_default): use \
                     at most {most}",
                    self.inflight
                ),
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(Error::invalid(
                "handshake_timeout",
                "`handshake_timeout` 0s leaves workers no time to start: use at least 1ms (the \
                 default is 10s)",
            ));
        }
        if self.max_chunks_per_worker == Some(0) {
            return Err(Error::invalid(
                "max_chunks_per_worker",
                "`max_chunks_per_worker` 0 would retire every worker before its first chunk: \
                 use at least 1, or leave it unset",
            ));
        }
        if self.max_worker_rss == Some(0) {
            return Err(Error::invalid(
                "max_worker_rss",
                "`max_worker_rss` 0 would retire every worker after its first chunk: give a \
                 size such as 512MiB, or leave it unset",
            ));
        }
        if self.supervision.chunk_timeout == Some(Duration::ZERO) {
            return Err(Error::invalid(
                "chunk_timeout",
                "`chunk_timeout` 0s kills every chunk: use at least 1ms, or leave \
                 `chunk_timeout` unset for no limit",
            ));
        }
        Ok(())
    }

    /// The start method the pool uses: [`StartMethod::ForkServer`] only where the program
    /// has a fork server (started by `init`, or in a test binary by
    /// [`enable_test_support!`](crate::enable_test_support)) and the workers are this very
    /// program (no other `worker_exe`); otherwise spawn.
    fn effective_start(&self) -> StartMethod {
        match self.start {
            StartMethod::ForkServer
                if self.worker_exe.is_some() || !crate::engine::forkserver::available() =>
            {
                StartMethod::Spawn
            }
            start => start,
        }
    }

    /// The executable the workers run, and how they start.
    fn worker_exe(&self) -> Result<spawn::WorkerExe> {
        Ok(spawn::WorkerExe {
            path: match &self.worker_exe {
                Some(exe) => exe.clone(),
                None => std::env::current_exe()?,
            },
            via_test: self.test_harness,
            spawner: match self.effective_start() {
                StartMethod::Spawn => Some(Arc::new(spawn::Spawner::new()?)),
                // Fork needs this process single-threaded: the spawner (for replacements
                // without a fork server) starts once the workers are forked; a fork
                // server's pool starts it only if it has to spawn.
                StartMethod::Fork | StartMethod::ForkServer => None,
            },
        })
    }

    /// The shared region with its control block (on huge pages when asked), and the
    /// parent's view of the control block.
    fn region(&self) -> Result<(SharedRegion, Control)> {
        let control_len = crate::engine::control::control_len(self.workers);
        let backing = if self.huge_pages {
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
        Ok((region, control))
    }
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
    /// Record the job's timeline in [`JobStats::trace`](crate::JobStats::trace): every chunk attempt (worker,
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
