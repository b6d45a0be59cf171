//! The measurement lab, built on the engine: a whole measured run (the pool, the
//! single-process baseline, verification, threads and single modes, streaming to a file),
//! its statistics and advice, the sweep over worker counts and chunk sizes, processes
//! against threads (`compare`), the IPC benchmark, and writing the files a user names
//! without clobbering anything ([`OutputFile`]). Results are plain data ([`crate::Report`], [`SweepTable`],
//! [`IpcBenchReport`]); turning them into text, tables and pictures is
//! [`crate::report`]'s job.

pub(crate) mod advice;
pub(crate) mod baseline;
pub mod compare;
pub(crate) mod contention;
pub mod ipc_bench;
// The statistics and the run's metadata, whose types the root of this module re-exports:
// the modules themselves are the command's and the crate's, not API.
#[doc(hidden)]
pub mod measure;
#[doc(hidden)]
pub mod meta;
pub(crate) mod model;
pub mod options;
pub mod output;
pub(crate) mod run;
pub(crate) mod stream;
pub mod sweep;
pub(crate) mod threads;

pub use crate::engine::limits::{Cpus, Machine, MemoryLimit};
pub use advice::{Advice, Limit};
pub use compare::{ModeSide, ModesComparison};
pub use contention::Contention;
pub use ipc_bench::{IpcBenchOptions, IpcBenchReport};
pub use measure::{Ratio, Summary};
pub use meta::{MachineInfo, Meta, SCHEMA_VERSION, WORKERS_ENV, WorkersFrom, default_workers};
pub use model::{Breakdown, Mismatch, OsUsage, OutputReport, Repeats};
pub use output::{OutputFile, check_distinct};
pub use sweep::{SweepOptions, SweepTable};
// The lab's mode and the runs that hand over the verified output: the root has `run`
// and `run_reduce`.
pub use model::Mode;
pub use run::{run_inspect, run_reduce_inspect};
