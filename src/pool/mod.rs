//! The pool: worker processes, their channels, and the shared region they write into.
//!
//! [`PoolBuilder::build`] starts the workers ([`spawn`]); [`Pool::run`] sends a job and
//! hands out its chunks ([`dispatch`]); dropping the pool stops and reaps every worker.

mod dispatch;
mod spawn;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{IpcReceiverSet, IpcSender};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::limits::{Machine, check_memory};
use crate::protocol::ToWorker;
use crate::schedule::ChunkPlan;
use crate::shm::{Mapping, SharedRegion};
use crate::workload::{Element, Workload};

/// Default number of chunks in flight per worker: one running, one queued, so a worker never
/// waits a round trip for its next chunk and the parent never fills a channel.
pub const DEFAULT_INFLIGHT: usize = 2;
/// Default deadline for all workers of a start to connect back.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Configures and starts a [`Pool`].
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    workers: usize,
    inflight: usize,
    worker_exe: Option<PathBuf>,
    handshake_timeout: Duration,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            workers: Machine::read().cores_logical,
            inflight: DEFAULT_INFLIGHT,
            worker_exe: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl PoolBuilder {
    /// Number of worker processes (default: the number of logical cores).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Chunks in flight per worker (default [`DEFAULT_INFLIGHT`]).
    pub fn inflight(mut self, inflight: usize) -> Self {
        self.inflight = inflight;
        self
    }

    /// The executable workers run (default: [`std::env::current_exe`]). It must call
    /// [`crate::init`] (or [`crate::init_with`]) first thing in `main`.
    pub fn worker_exe(mut self, exe: impl Into<PathBuf>) -> Self {
        self.worker_exe = Some(exe.into());
        self
    }

    /// How long workers may take to start and connect back (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Starts the workers. On failure none is left running.
    pub fn build(self) -> Result<Pool> {
        if self.workers == 0 {
            return Err(Error::InvalidInput(
                "--workers must be at least 1 (got 0)".into(),
            ));
        }
        if self.inflight == 0 {
            return Err(Error::InvalidInput(
                "--inflight must be at least 1 (got 0)".into(),
            ));
        }
        crate::limits::check_worker_limits(self.workers)?;
        let exe = match self.worker_exe {
            Some(exe) => exe,
            None => std::env::current_exe()?,
        };
        let region = SharedRegion::new()?;
        let began = Instant::now();
        let started = spawn::start_workers(
            &exe,
            region.raw_fd(),
            0..self.workers,
            self.handshake_timeout,
        )?;
        let spawn_time = began.elapsed();

        let mut pool = Pool {
            set: IpcReceiverSet::new()?,
            by_receiver: HashMap::new(),
            workers: Vec::with_capacity(started.len()),
            region,
            mapping: None,
            inflight: self.inflight,
            spawn_time,
            next_job: 0,
            broken: false,
            handshake_ipc: (0, 0),
        };
        for s in started {
            pool.handshake_ipc.0 += 1;
            pool.handshake_ipc.1 += s.hello_bytes;
            let rid = pool.set.add(s.rx)?;
            pool.by_receiver.insert(rid, pool.workers.len());
            pool.workers.push(WorkerSlot {
                id: s.id,
                pid: s.pid,
                child: Some(s.child),
                tx: Some(s.tx),
            });
        }
        Ok(pool)
    }
}

/// A worker process as the parent sees it.
struct WorkerSlot {
    id: usize,
    pid: u32,
    /// `None` once reaped.
    child: Option<Child>,
    /// `None` once told to stop.
    tx: Option<IpcSender<ToWorker>>,
}

/// A set of worker processes sharing one memory region, ready to run jobs.
///
/// ```no_run
/// use procpool::{Pool, Squares};
///
/// procpool::init(); // first thing in main: a re-executed worker serves here and exits
/// let mut pool = Pool::builder().workers(2).build()?;
/// let run = pool.run(&Squares, 1000)?;
/// assert_eq!(run.results()[12], 144);
/// # Ok::<(), procpool::Error>(())
/// ```
pub struct Pool {
    set: IpcReceiverSet,
    by_receiver: HashMap<u64, usize>,
    workers: Vec<WorkerSlot>,
    region: SharedRegion,
    mapping: Option<Mapping>,
    inflight: usize,
    spawn_time: Duration,
    next_job: u64,
    broken: bool,
    /// Messages and bytes of the handshakes, not yet charged to a job.
    handshake_ipc: (u64, u64),
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.pids())
            .field("inflight", &self.inflight)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Options of one job.
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// Chunk length in elements (default: about four chunks per worker).
    pub chunk_size: Option<u64>,
    /// Faults to inject (see [`crate::fault`]).
    pub faults: Vec<Fault>,
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
    /// Per worker.
    pub workers: Vec<WorkerStats>,
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
        // SAFETY: the job is finished: every chunk was reported done and none is in flight,
        // so no worker writes the region while this borrow of the pool lives (the next job
        // needs `&mut Pool`).
        let bytes = unsafe { mapping.slice(0..mapping.len()) };
        bytemuck::cast_slice(bytes)
    }

    /// The measurements.
    pub fn stats(&self) -> &JobStats {
        &self.stats
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

    /// How long starting the workers (spawn and handshake) took.
    pub fn spawn_time(&self) -> Duration {
        self.spawn_time
    }

    /// Runs `workload` on `0..n` with default options.
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
        if self.broken {
            return Err(Error::Broken);
        }
        let elem_size = std::mem::size_of::<W::Output>();
        let region_len = u128::from(n) * elem_size as u128;
        check_memory(
            &format!("{} with n = {n}", W::NAME),
            &[("shared results", region_len)],
            &Machine::read(),
        )?;
        if options.chunk_size == Some(0) {
            return Err(Error::InvalidInput(
                "--chunk-size must be at least 1 (got 0)".into(),
            ));
        }
        let plan = match options.chunk_size {
            Some(cs) => ChunkPlan::new(n, cs),
            None => ChunkPlan::for_workers(n, self.workers.len()),
        };
        let params = postcard::to_stdvec(workload)
            .map_err(|e| Error::Ipc(format!("cannot encode the workload: {e}")))?;

        self.mapping = None;
        self.region.reset(region_len as u64)?;
        self.mapping = Some(self.region.map()?);
        let job = self.next_job;
        self.next_job += 1;
        let spec = crate::protocol::JobSpec {
            job,
            workload: W::NAME.to_string(),
            params,
            elem_size: elem_size as u32,
            region_len: region_len as u64,
            faults: options.faults.clone(),
        };
        let stats = match self.dispatch(spec, plan) {
            Ok(stats) => stats,
            Err(e) => {
                self.broken = true;
                self.stop_all();
                return Err(e);
            }
        };
        Ok(PoolRun {
            pool: self,
            stats,
            _elem: std::marker::PhantomData,
        })
    }

    /// Stops every worker (Shutdown, a short grace period, then SIGKILL) and reaps it.
    fn stop_all(&mut self) {
        for w in &mut self.workers {
            if let Some(tx) = w.tx.take() {
                let _ = tx.send(ToWorker::Shutdown);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        for w in &mut self.workers {
            if let Some(mut child) = w.child.take() {
                let grace = deadline.saturating_duration_since(Instant::now());
                spawn::reap_within(&mut child, grace);
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
