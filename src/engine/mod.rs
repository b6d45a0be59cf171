//! The engine: worker processes, the shared region they write into, and the supervisor that
//! hands them chunks and survives their deaths.
//!
//! Everything here is crate-private; the crate root re-exports the few types a user needs
//! ([`crate::Pool`], [`crate::PoolBuilder`], [`crate::Supervision`], …). The engine sits on
//! the workload layer (the [`crate::Workload`] trait and the [`crate::Registry`]) and on
//! nothing above it: it measures a job but never reports, renders or prints.
//!
//! - `pool/`: [`crate::Pool`]: options (`options.rs`), start (`spawn.rs`) and the workers'
//!   lifecycle (`workers.rs`), one supervisor (`supervise.rs`) driving two dispatchers:
//!   the shared-memory queue (`queue.rs`, its decisions in `claims.rs`) and the channels
//!   (`dispatch.rs`, its bookkeeping in `ledger.rs`); the streaming ring (`window.rs`),
//!   the stats (`stats.rs`), observers (`observe.rs`), the private socket directory.
//! - `closure`: [`crate::Closure`] and [`crate::Fold`], kernels as closures, and how a
//!   worker finds one (a checked place in the binary: the closure module's `unsafe`).
//! - `worker`: the worker side of the protocol.
//! - `protocol`: the messages between parent and workers.
//! - `control`: the control block, the shared-memory chunk queue: the atomics and futexes.
//! - `input`: [`crate::Input`], a read-only slice shared through a sealed memfd, and
//!   the thread-local contexts that (de)serialize it as an index.
//! - `param`: [`crate::Param`], a parameter value with an identity, sent once and
//!   recognised on later jobs without being encoded again.
//! - `sealed`: the sealed memfd, its read-only mapping and the socket its descriptor
//!   travels on (the input's `unsafe`).
//! - `shm`: the shared region (a memfd) and its mappings: most of the crate's `unsafe`.
//! - `sys`: starting processes (fork and exec, fork), reaping, CPU affinity, resource limits.
//! - `schedule`: cutting `0..n` into chunks (static, dynamic, guided).
//! - `fault`: fault injection (`--inject`).
//! - `interrupt`: Ctrl-C and SIGTERM; `cancel`: [`crate::Cancel`], a stop of one job.
//! - `limits`: what the machine allows (CPUs, memory, open files, processes), checked up
//!   front; `cgroup`: the CPU quota and memory limit of the process's control group.

pub(crate) mod cancel;
pub(crate) mod cgroup;
pub(crate) mod closure;
pub(crate) mod control;
pub(crate) mod fault;
pub(crate) mod forkserver;
pub(crate) mod input;
pub(crate) mod interrupt;
pub(crate) mod limits;
pub(crate) mod param;
pub(crate) mod pool;
pub(crate) mod protocol;
pub(crate) mod schedule;
pub(crate) mod sealed;
pub(crate) mod shm;
pub(crate) mod sys;
pub(crate) mod worker;
