//! # procpool
//!
//! A multi-process supervisor with shared memory that measures what processes buy you.
//!
//! `procpool --workers 8 squares 10000000` starts 8 worker processes, hands each a stream of
//! chunks (ranges, a few bytes each) over `ipc-channel`, lets every worker write its results
//! straight into one shared-memory region, then runs the same job in a single process,
//! checks both outputs are identical, and reports the speedup, the parallel efficiency and
//! where the time went.
//!
//! # Quick start (library)
//!
//! ```no_run
//! use procpool::{Pool, Squares};
//!
//! fn main() -> Result<(), procpool::Error> {
//!     // First thing in main, always: when this binary is re-executed as a worker, this
//!     // call serves the parent and exits; it never returns in a worker.
//!     procpool::init();
//!
//!     let mut pool = Pool::builder().workers(4).build()?;
//!     let run = pool.run(&Squares, 1_000_000)?;
//!     assert_eq!(run.results()[1000], 1_000_000);
//!     Ok(())
//! }
//! ```
//!
//! Your own workload: implement [`Workload`] (a name, serializable parameters, an output
//! element type, a kernel, optionally a per-chunk reduction), then call
//! `procpool::init_with(Registry::builtin().register::<MyWorkload>())` first thing in `main`.
//! See `examples/custom_workload.rs`.
//!
//! Forgetting [`init`] is the classic pitfall of re-exec process pools (procspawn has the
//! same rule): the worker would run your whole `main` again instead of serving. procpool
//! notices (the worker exits before connecting) and says so in the error.
//!
//! # Layout
//!
//! - [`pool`]: [`Pool`] and [`PoolBuilder`]: start workers, dispatch chunks, shut down.
//! - [`worker`]: the worker side of the protocol.
//! - [`protocol`]: the messages between parent and workers.
//! - [`shm`]: the shared region (memfd), with the crate's `unsafe` mapping code.
//! - [`sys`]: process set-up between fork and exec, exit statuses, resource limits.
//! - [`schedule`]: cutting `0..n` into chunks.
//! - [`workload`]: the [`Workload`] trait, the [`Registry`], the built-in workloads.
//! - [`baseline`]: the single-process run and the element-wise verification.
//! - [`threads`]: the same job on threads of one process, for comparison.
//! - [`stream`]: streaming huge outputs to a file in bounded memory.
//! - [`measure`]: statistics, speedup, efficiency, Karp–Flatt, Amdahl's law.
//! - [`advice`]: what limited a run, in plain words, from its measurements.
//! - [`sweep`]: the same job over a grid of worker counts and chunk sizes.
//! - [`ipc_bench`]: round-trip latency and throughput of the channels and shared memory.
//! - [`interrupt`]: Ctrl-C and SIGTERM handling.
//! - [`run`](mod@run): a whole measured run, as the CLI does it.
//! - [`report`]: the [`Report`] and its text and JSON forms, the sweep table, its exporters
//!   (CSV, JSON, Markdown) and its SVG plot.
//! - [`limits`], [`parse`], [`fault`], [`error`]: checks, parsing, fault injection, errors.

#![deny(missing_docs)]

pub mod advice;
pub mod baseline;
pub mod error;
pub mod fault;
pub mod interrupt;
pub mod ipc_bench;
pub mod limits;
pub mod measure;
pub mod parse;
pub mod pool;
pub mod protocol;
pub mod report;
pub mod run;
pub mod schedule;
pub mod shm;
pub mod stream;
pub mod sweep;
pub mod sys;
pub mod threads;
pub(crate) mod units;
pub mod worker;
pub mod workload;

pub use error::{Error, Phase, Result};
pub use pool::{Event, JobOptions, JobStats, Observer, Pool, PoolBuilder, PoolRun, WindowSink};
pub use report::Report;
pub use run::{RunOptions, run};
pub use workload::{
    Collatz, Element, Hash, Mandelbrot, Primes, Registry, Sleep, Spin, Squares, Workload,
};

/// Serves as a worker if this process was started as one; otherwise returns at once.
///
/// Call it first thing in `main` of every binary a [`Pool`] uses as its worker executable.
/// Uses the built-in workloads; see [`init_with`] to add your own.
pub fn init() {
    init_with(Registry::builtin());
}

/// The workloads given to [`init_with`] (the built-ins if it was not called); forked
/// workers serve from it.
static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();

pub(crate) fn registry() -> &'static Registry {
    REGISTRY.get_or_init(Registry::builtin)
}

/// Like [`init`], with the workloads in `registry`.
pub fn init_with(registry: Registry) {
    sys::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some(protocol::WORKER_ARG) {
        // The parent keeps the registry for workers started with `fork`.
        let _ = REGISTRY.set(registry);
        return;
    }
    let code = match worker::WorkerArgs::from_args(&args) {
        Ok(worker_args) => worker::serve(&worker_args, &registry),
        Err(message) => {
            eprintln!("procpool worker: {message}");
            2
        }
    };
    std::process::exit(code);
}
