//! # procpool
//!
//! A multi-process supervisor with shared memory that measures what processes buy you.
//!
//! `procpool --workers 8 squares 10000000` starts 8 worker processes that claim chunks of
//! the job from a queue in shared memory (one atomic add each; `ipc-channel` carries only
//! the handshake, the job's description and errors), lets every worker write its results
//! straight into one shared-memory region, then runs the same job in a single process,
//! checks both outputs are identical, and reports the speedup, the parallel efficiency and
//! where the time went.
//!
//! # Your function across processes
//!
//! ```no_run
//! use procpool::{Input, Pool};
//!
//! fn main() -> Result<(), procpool::Error> {
//!     procpool::init(); // FIRST THING in main: a worker is this binary, and serves here
//!     let mut pool = Pool::builder().workers(4).build()?;
//!     // Element i is f(&params, i), computed in the workers, written into shared memory.
//!     let roots = pool.map_range(1_000_000, &0.5, |scale, i| (i as f64).sqrt() * scale)?;
//!     assert_eq!(roots[400], 10.0);
//!     drop(roots);
//!     // Large read-only data goes in an `Input`: one sealed memfd every worker maps.
//!     let table = Input::new(&(0..1000u64).map(|i| i * i).collect::<Vec<_>>())?;
//!     let looked_up = pool.map_range(1000, &table, |table, i| table[i as usize] + 1)?;
//!     assert_eq!(looked_up[10], 101);
//!     Ok(())
//! }
//! ```
//!
//! **What the closure needs goes in `params` or an [`Input`].** The closure runs in the
//! worker processes, which cannot see the caller's variables: it captures nothing (a
//! closure that does is refused when the program is built, saying so), and takes what it
//! needs from its first argument, the `params` the pool sends each worker once per job
//! (any serde value). Workers find the closure in their own binary, the same build as the
//! parent's (checked when they start). [`Pool::map_range`], [`Pool::map_chunks`],
//! [`Pool::map_items`], [`Pool::fold_range`] and [`Pool::try_map_range`] run one job;
//! [`Closure`] and [`Fold`] are the same jobs as values, for job options, streaming, or
//! the lab's measured, verified [`run()`].
//!
//! # Which entry point
//!
//! | you have, or want | call |
//! |---|---|
//! | a function of the index, output in shared memory | [`Pool::map_range`] (one element per call), [`Pool::map_chunks`] (a chunk per call) |
//! | a function of items you already have | [`Pool::map_items`] |
//! | a fold, with no output buffer at all | [`Pool::fold_range`]; for a [`Reduce`] workload, [`Pool::reduce`] |
//! | a function that may fail | [`Pool::try_map_range`] |
//! | a named [`Workload`] (a struct of parameters, [`Workload::setup`] once per worker) | [`Pool::run`]; [`Pool::run_with`] for [`JobOptions`] |
//! | the output and its reduction | [`Pool::run_and_reduce_with`] |
//! | results as chunks finish, or stop early | [`Pool::for_each_chunk`], [`Pool::for_each_reduced_chunk`] |
//! | an output larger than memory | [`Pool::stream_with`] |
//! | a measured, verified run and its [`Report`] | [`run()`], [`run_reduce`]; [`lab::run_inspect`] to see the output |
//! | more than one machine | `procpool::mpi::run` (the `mpi` feature) |
//!
//! [`Closure`] and [`Fold`] are the closure jobs as values: every row that takes a
//! workload takes them. The root holds the names most programs need; [`trace`] (a job's
//! timeline), [`observe`] (events, chunks as they finish) and [`job`] (stopping,
//! injecting faults, the measurements' parts) hold the rest.
//!
//! # Your own kernel in five minutes
//!
//! For a kernel with a name of its own (a struct of parameters, a registry lists it,
//! [`Workload::setup`] prepares it once per worker), implement [`Workload`].
//!
//! A kernel fills `out[k]` for every index `range.start + k` of a chunk; procpool runs it
//! in worker processes, each writing straight into shared memory. Everything below is
//! optional except the name, the output type and the kernel.
//!
//! ```no_run
//! use std::ops::{ControlFlow, Range};
//! use procpool::{ChunkOrder, Input, JobOptions, Pool, Reduce, Registry, Workload};
//! use serde::{Deserialize, Serialize};
//!
//! // 1. The workload: its fields are its parameters, sent to each worker once per job.
//! //    A large read-only input is an `Input`: one sealed memfd every worker maps.
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Scale {
//!     factor: f64,
//!     data: Input<f64>,
//! }
//!
//! impl Workload for Scale {
//!     const NAME: &'static str = "scale";
//!     type Output = f64; // any plain-data type: integers, floats, arrays, #[repr(C)] structs
//!     fn kernel(&self, range: Range<u64>, out: &mut [f64]) {
//!         for (slot, i) in out.iter_mut().zip(range) {
//!             *slot = self.data[i as usize] * self.factor;
//!         }
//!     }
//! }
//!
//! // 2. Optionally, a reduction: workers reduce each chunk, the parent combines the
//! //    chunks in chunk order (so a float sum comes out the same on every run).
//! impl Reduce for Scale {
//!     type Acc = f64;
//!     fn identity(&self) -> f64 { 0.0 }
//!     fn reduce_chunk(&self, _range: Range<u64>, out: &[f64]) -> f64 { out.iter().sum() }
//!     fn combine(&self, a: f64, b: f64) -> f64 { a + b }
//! }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     // 3. Register it, FIRST THING in main: a worker is this binary started again, and
//!     //    serves here instead of running the rest of main.
//!     procpool::init_with(Registry::builtin().register_reduce::<Scale>());
//!
//!     let data: Vec<f64> = (0..1_000_000).map(|i| i as f64).collect();
//!     let work = Scale { factor: 0.5, data: Input::new(&data)? };
//!     let mut pool = Pool::builder().workers(4).build()?;
//!
//!     // 4. Run it: the output stays in shared memory until the next job.
//!     let run = pool.run(&work, 1_000_000)?;
//!     assert_eq!(run.results()[10], 5.0);
//!     drop(run);
//!
//!     // 5. Or only reduce (no output buffer at all), or take chunks as they finish.
//!     let total = pool.reduce(&work, 1_000_000)?.value;
//!     let options = JobOptions::default();
//!     pool.for_each_chunk(&work, 1_000_000, &options, ChunkOrder::Completion, |chunk| {
//!         println!("{:?} done", chunk.range);
//!         ControlFlow::Continue(())
//!     })?;
//!     println!("sum = {total}");
//!     Ok(())
//! }
//! ```
//!
//! Then [`run_reduce`] (or [`run()`] for a workload without [`Reduce`]) does what the
//! command does with it: a pool and a single-process run, the outputs compared byte by
//! byte and the reductions bit for bit, and a [`Report`] of the speedup and where the time
//! went. To test it across real processes under `cargo test`, see
//! [`enable_test_support!`].
//!
//! What else a workload can say, each optional:
//! - **Per-worker set-up** (Python's `Pool(initializer=…)`): [`Workload::setup`] builds a
//!   table or loads a model once per worker, into `#[serde(skip)]` fields.
//! - **Float tolerance**: [`Workload::tolerance`] lets the verification accept outputs
//!   that differ in the last bits between processes; a mismatch shows the index and both
//!   values (`examples/integrate.rs`).
//! - **Any element**: a `#[repr(C)]` struct deriving `Pod` and `Zeroable` through the
//!   re-exported [`bytemuck`] is an [`Element`]; the report's `checksum` is the start of
//!   the SHA-256 of the output's bytes.
//! - **Results as they finish**: [`Pool::for_each_chunk`] in completion or index order
//!   ([`ChunkOrder`]), stopped early with `ControlFlow::Break`;
//!   [`Pool::for_each_reduced_chunk`] adds each chunk's accumulator
//!   (`examples/streaming_results.rs`).
//! - **Shared input**: [`Input`] (`examples/matvec.rs`: a 30.5 MiB matrix, under 1 KiB of
//!   messages).
//! - **Large parameters**: a plain field is encoded on every job (1–2 ms per
//!   MiB) to see whether it changed; hold read-only data in an [`Input`] and other large
//!   values in a [`Param`], which an unchanged job does not encode or send again (see
//!   [`Workload`] for the rule, [`JobStats::param_bytes`] for the size).
//! - **A timeline**: [`JobOptions::trace`] records every chunk attempt (worker, start,
//!   end, attempt) and the deaths, restarts and retries in [`JobStats::trace`], a
//!   [`Trace`]; [`report::trace::chrome_trace`] turns it into a file Perfetto opens.
//! - **Recycling** to contain leaks: [`PoolBuilder::max_chunks_per_worker`] (Python's
//!   `maxtasksperchild`) and [`PoolBuilder::max_worker_rss`].
//!
//! A built-in workload works the same way:
//!
//! ```no_run
//! use procpool::Pool;
//! use procpool::workload::Squares;
//!
//! procpool::init();
//! let mut pool = Pool::builder().workers(4).build()?;
//! let run = pool.run(&Squares, 1_000_000)?;
//! assert_eq!(run.results()[1000], 1_000_000);
//! # Ok::<(), procpool::Error>(())
//! ```
//!
//! Forgetting [`init`] is the classic pitfall of re-exec process pools (procspawn has the
//! same rule): the worker would run your whole `main` again instead of serving. procpool
//! notices (such a worker refuses to build a pool of its own and exits; the parent says to
//! call `init`). And whatever runs *before* `init` in `main` runs again in every worker.
//!
//! A pool is always ready for its next job: a failed job's workers are replaced, a
//! panicking kernel is an [`Error::KernelPanicked`], and a workload the workers do not have
//! is refused before any of them sees it. `examples/misuse.rs` shows each of these.
//!
//! # Layout
//!
//! Five layers, each a folder, each importing only from the layers below it:
//!
//! ```text
//!  bin/        the `procpool` command: clap types, flag-named messages, the progress bar,
//!    │         completions and man page
//!  report/     renderings only: the report as text, the sweep table, exports, the SVG plot,
//!    │         a run's timeline (Chrome trace JSON, SVG); it reads the lab's model, never
//!    │         the engine
//!  lab/        a measured run: baseline, verification, threads and single modes, streaming,
//!    │         statistics, advice, sweep, ipc-bench; its results (`Report`, `SweepTable`);
//!    │         the table of which options each mode takes (`lab::options`)
//!    │         mpi/ beside it (feature `mpi`): the same run on the ranks of an `mpirun`,
//!    │         and starting that mpirun for `procpool --ranks`
//!  engine/     the pool: spawn, handshake, dispatch, supervision, the shared region,
//!    │         the worker side, fault injection, signals, limits (all crate-private)
//!  workload/   the `Workload` trait, `Element`, the `Registry`, the built-in kernels
//!    │
//!  error, units   what every layer shares: the error type, and numbers as people read them
//! ```
//!
//! The data path of one job: [`PoolBuilder::build`] starts the workers and hands each the
//! shared region; [`Pool::run`] sends every worker the job's serialized parameters (only
//! when they changed since its last job) and posts the job's chunk geometry in the
//! region's control block; each worker rebuilds the workload from the [`Registry`], claims
//! chunk indices, runs the kernel on each range and writes the results straight into the
//! region; the parent sleeps until the job is done and then reads the region (or, with
//! [`Pool::for_each_chunk`], until a worker logs a finished chunk in the region and wakes
//! it). With [`Dispatch::Channel`] the parent sends each chunk as a message instead, to
//! compare. The lab ([`run()`]) does that, then runs the same kernel in one process,
//! compares, and fills in a [`Report`]; [`report`] turns it into text.
//!
//! The public API is the root's names below, [`trace`], [`observe`] and [`job`] (see
//! [Which entry point](#which-entry-point)), plus [`workload`] (the built-in workloads),
//! [`error`] (what an [`Error`] holds: the lost worker, its exit cause, the interrupted
//! phase), [`lab`] (sweep, ipc-bench, the report's parts) and [`report`]; with the `mpi`
//! feature, `mpi` too (`procpool::mpi::run` and `run_reduce`: the job on the ranks of an
//! `mpirun`, and `run_mpirun`, which starts one; docs/mpi.md). `api.txt` lists all of it,
//! and CI holds the documentation to that list.
//!
//! # Platforms
//!
//! Linux only: the shared region and the shared input are memfds (sealed with `F_SEAL_*`),
//! a worker dies with its parent through `prctl(PR_SET_PDEATHSIG)`, idle workers sleep on
//! futexes in the shared region, and limits and memory are read from `/proc`. Other targets
//! stop at a `compile_error!` saying so.
//!

#[cfg(not(target_os = "linux"))]
compile_error!(
    "procpool runs on Linux only: it needs memfd_create and file seals for its shared \
     memory, prctl(PR_SET_PDEATHSIG) so workers die with their parent, futexes to wake \
     workers, and /proc for limits and memory"
);

mod engine;
pub mod error;
pub mod lab;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod report;
mod units;
pub mod workload;

pub use engine::closure::{Closure, Fold};
pub use engine::input::Input;
pub use engine::param::Param;
pub use engine::pool::{
    JobOptions, JobStats, Pool, PoolBuilder, PoolRun, Reduced, StartMethod, Supervision,
    WorkerStats,
};
pub use engine::protocol::Dispatch;
pub use engine::schedule::Schedule;
pub use error::{Error, Result};
pub use lab::model::Report;
pub use lab::run::{RunOptions, run, run_reduce};
pub use workload::{Element, Reduce, Registry, Workload};

/// A job's timeline: every chunk attempt and what happened to the workers
/// ([`JobOptions::trace`] records it into [`JobStats::trace`]).
pub mod trace {
    pub use crate::engine::pool::{Trace, TraceAttempt, TraceEvent, TraceEventKind, TracePhase};
}

/// Watching a job while it runs: events for an [`Observer`]
/// ([`PoolBuilder::observer`](crate::PoolBuilder::observer)), chunks as they finish
/// ([`Pool::for_each_chunk`](crate::Pool::for_each_chunk)), and the streaming window's sink.
pub mod observe {
    pub use crate::engine::pool::{Chunk, ChunkOrder, Event, Observer, WindowSink};
}

/// The parts of a job's options and measurements beyond the root's names: stopping it
/// ([`Cancel`], [`Interrupt`]), injecting faults ([`Fault`]), how results travel
/// ([`Transport`]), what the measurements hold ([`AutoChunk`], [`Death`]), a pool's
/// settings as plain data ([`PoolOptions`], which the lab's
/// [`RunOptions`] holds), and the bound on a closure's parameters
/// ([`Params`]).
pub mod job {
    pub use crate::engine::cancel::Cancel;
    pub use crate::engine::closure::Params;
    pub use crate::engine::fault::Fault;
    pub use crate::engine::interrupt::Interrupt;
    pub use crate::engine::pool::{AutoChunk, Death, PoolOptions};
    pub use crate::engine::protocol::Transport;
}

// The paths these names had before the modules above: kept so that code written against
// them still builds, hidden from the documentation, to be removed in a later version
// (CHANGELOG.md, "Deprecated").
#[doc(hidden)]
pub use engine::cancel::Cancel;
#[doc(hidden)]
pub use engine::closure::Params;
#[doc(hidden)]
pub use engine::fault::Fault;
#[doc(hidden)]
pub use engine::interrupt::Interrupt;
#[doc(hidden)]
pub use engine::pool::{
    AutoChunk, Chunk, ChunkOrder, Death, Event, Observer, PoolOptions, Trace, TraceAttempt,
    TraceEvent, TraceEventKind, TracePhase, WindowSink,
};
#[doc(hidden)]
pub use engine::protocol::Transport;
#[doc(hidden)]
pub use lab::model::Mode;
#[doc(hidden)]
pub use lab::run::{run_inspect, run_reduce_inspect};
#[doc(hidden)]
pub use workload::Tolerance;

/// The `bytemuck` crate procpool is built with, so that your element types can derive
/// `Pod` and `Zeroable` without a dependency of your own (see [`Element`]).
pub use bytemuck;

/// Serves as a worker if this process was started as one; otherwise returns at once.
///
/// Call it first thing in `main` of every binary a [`Pool`] uses as its worker executable.
/// Uses the built-in workloads; see [`init_with`] to add your own.
///
/// **Everything before this call runs again in every worker**: a worker is your binary,
/// started again with a hidden first argument, and it runs `main` from the top until it
/// reaches `init`. Set-up, logging and printing before `init` happen once per worker too
/// (procspawn has the same rule). In debug builds, `init` warns on stderr when it is called
/// after the process has started threads, has computed for more than 50 ms, or has been
/// running for 2 s, the signs that something ran before it. A worker whose `main` forgets `init` and builds a pool gets an
/// error from [`PoolBuilder::build`] instead of starting workers of its own.
///
/// In the program itself (not a worker), `init` forks procpool's **fork server** while the
/// process still has a single thread: a small process that forks every worker a pool asks
/// for, as a child of this process, with no exec and no handshake
/// ([`StartMethod::ForkServer`], the default). It holds the registry and nothing else, dies
/// with the program (its death signal follows the main thread) and leaves no file. A
/// program that never builds a pool pays that one fork. Called after the process started
/// threads, `init` starts no server, and pools spawn their workers.
pub fn init() {
    init_with(Registry::builtin());
}

/// Like [`init`], with the workloads in `registry`.
///
/// In a worker, this serves the parent and exits: nothing after it in `main` runs, but
/// whatever ran before it ran in the worker too. In the parent it returns at once and
/// changes nothing. (A pool that starts workers with `fork` does not re-execute the
/// binary; give it the same registry with [`PoolBuilder::registry`].)
pub fn init_with(registry: Registry) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some(engine::protocol::WORKER_ARG) {
        if cfg!(debug_assertions) {
            warn_if_late();
        }
        // While this process has one thread: the fork server pools start workers from.
        engine::forkserver::start(&registry);
        return;
    }
    serve_as_worker(&args, &registry);
}

/// Lets a crate's tests run its own workloads across real worker processes under plain
/// `cargo test`.
///
/// A test binary's `main` belongs to the test harness, so it cannot call [`init_with`].
/// This macro defines, at the top level of a test file, a hidden `#[ignore]`d test that
/// serves as the worker entry instead; a pool built with [`PoolBuilder::test_harness`]
/// starts its workers through it (procspawn's `enable_test_support!` does the same). Give
/// it the registry `main` would give `init_with`:
///
/// ```no_run
/// use std::ops::Range;
/// use procpool::{Pool, Registry, Workload};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Cubes;
///
/// impl Workload for Cubes {
///     const NAME: &'static str = "cubes";
///     type Output = u64;
///     fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
///         for (slot, i) in out.iter_mut().zip(range) {
///             *slot = i.wrapping_pow(3);
///         }
///     }
/// }
///
/// procpool::enable_test_support!(Registry::builtin().register::<Cubes>());
///
/// #[test]
/// fn cubes_across_two_processes() {
///     let mut pool = Pool::builder().workers(2).test_harness().build().unwrap();
///     let run = pool.run(&Cubes, 1000).unwrap();
///     assert_eq!(run.results()[10], 1000);
/// }
/// ```
///
/// When `cargo test` itself runs the hidden test (with `--ignored`), it returns at once.
///
/// It also starts the test binary's fork server before `main` (a constructor, run while
/// the process has one thread, as [`init`] does in a program), so that pools built with
/// [`PoolBuilder::test_harness`] fork their workers through it, as a program's pools do.
#[macro_export]
macro_rules! enable_test_support {
    ($registry:expr) => {
        /// procpool's worker entry in this test binary: procpool runs it in its workers.
        #[test]
        #[ignore = "procpool's worker entry: procpool runs it in its worker processes"]
        fn __procpool_test_worker() {
            $crate::serve_test_worker($registry);
        }

        /// Starts procpool's fork server for this test binary before `main`: libtest runs
        /// every test on a thread of its own, so there is no single-threaded moment later.
        // SAFETY (of the section): the C runtime calls each `extern "C" fn()` in
        // `.init_array` once, before `main`, with nothing else running; this one takes no
        // arguments and returns nothing, as it expects.
        #[used]
        #[unsafe(link_section = ".init_array")]
        static __PROCPOOL_FORK_SERVER: extern "C" fn() = {
            extern "C" fn __procpool_start_fork_server() {
                $crate::start_test_fork_server(|| $registry);
            }
            __procpool_start_fork_server
        };
    };
}

/// The constructor [`enable_test_support!`] puts in a test binary: starts its fork server
/// with the registry `registry` makes, unless this process is one of procpool's workers.
/// Never panics (a registry that panics leaves the binary without a server).
#[doc(hidden)]
pub fn start_test_fork_server(registry: impl FnOnce() -> Registry) {
    if std::env::var_os(engine::pool::TEST_WORKER_ENV).is_some() {
        return;
    }
    engine::pool::TEST_SUPPORT.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Ok(registry) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(registry)) {
        engine::forkserver::start(&registry);
    }
}

/// The body of the hidden test [`enable_test_support!`] defines: serves as a worker when
/// procpool started this process as one, otherwise returns at once.
#[doc(hidden)]
pub fn serve_test_worker(registry: Registry) {
    let Ok(args) = std::env::var(engine::pool::TEST_WORKER_ENV) else {
        return;
    };
    let args: Vec<String> = args.split(' ').map(str::to_string).collect();
    serve_as_worker(&args, &registry);
}

/// How long a process may run before `init` without a warning: longer than starting a
/// binary takes, shorter than any set-up worth repeating in every worker.
const LATE_INIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How much CPU a process may use before `init` without a warning: starting a debug
/// binary and its runtime takes a few milliseconds; a set-up that computes for longer
/// (loading a model, building a table) would run again in every worker. CPU time, unlike
/// the time since the start, does not grow on a busy machine.
const LATE_INIT_CPU: std::time::Duration = std::time::Duration::from_millis(50);

/// Warns (debug builds) when `init` comes after threads were started, after `LATE_INIT`,
/// or after `LATE_INIT_CPU` of computing: whatever ran before it will run again in every
/// worker.
fn warn_if_late() {
    let threads = engine::sys::thread_count().unwrap_or(1);
    let cpu = engine::sys::process_cpu(std::process::id());
    if let Some(warning) = late_init_warning(threads, engine::sys::process_age(), cpu) {
        eprintln!("{warning}");
    }
}

/// The warning for an `init` reached with `threads` running after `age`, having used
/// `cpu`, if it is late.
fn late_init_warning(
    threads: usize,
    age: Option<std::time::Duration>,
    cpu: Option<std::time::Duration>,
) -> Option<String> {
    let what = match (age, cpu) {
        _ if threads > 1 => format!("this process already runs {threads} threads"),
        (_, Some(cpu)) if cpu > LATE_INIT_CPU => {
            format!("this process has computed for {cpu:.1?}")
        }
        (Some(age), _) if age > LATE_INIT => format!("this process has run for {age:.1?}"),
        _ => return None,
    };
    Some(format!(
        "procpool: init was not the first thing in main ({what}): everything before it runs \
         again in every worker; move it to the top of main (a debug-build warning)"
    ))
}

/// Serves the parent as worker with `args` (the hidden entry's arguments) and exits.
fn serve_as_worker(args: &[String], registry: &Registry) -> ! {
    engine::sys::keep_freed_memory();
    let code = match engine::worker::WorkerArgs::from_args(args) {
        Ok(worker_args) => engine::worker::serve(&worker_args, registry),
        Err(message) => {
            eprintln!("procpool worker: {message}");
            2
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_late_init_is_named_and_an_early_one_is_not() {
        let ms = Duration::from_millis;
        assert_eq!(late_init_warning(1, Some(ms(5)), Some(ms(3))), None);
        assert_eq!(late_init_warning(1, None, None), None);
        // A busy machine delays a start, but does not make it compute.
        assert_eq!(late_init_warning(1, Some(ms(900)), Some(ms(4))), None);
        let threads = late_init_warning(3, Some(Duration::ZERO), None).expect("threads");
        assert!(threads.contains("already runs 3 threads"), "{threads}");
        assert!(threads.contains("runs again in every worker"), "{threads}");
        let slow = late_init_warning(1, Some(Duration::from_secs(5)), None).expect("late");
        assert!(slow.contains("has run for 5.0s"), "{slow}");
        // A 300 ms set-up before init, repeated in every worker.
        let setup = late_init_warning(1, Some(ms(320)), Some(ms(300))).expect("computed");
        assert!(setup.contains("has computed for 300.0ms"), "{setup}");
    }
}
