//! The MPI backend (cargo feature `mpi`): the same job, report and verification across
//! the ranks `mpirun` started, on one machine or many.
//!
//! `mpirun -np K procpool --backend mpi hash 100000` starts K copies of procpool; rank 0
//! is the supervisor and dispatcher, ranks 1..K-1 are workers. Rank 0 sends every worker
//! the workload's value (postcard, as the process pool does), then hands out chunks with
//! point-to-point messages (`--schedule`, `--chunk-size`, `--inflight` as usual). Workers on
//! rank 0's node write results straight into an MPI-3 shared window
//! (`MPI_Win_allocate_shared` on the node communicator of
//! `MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)`), the MPI form of procpool's memfd region;
//! workers on other nodes `MPI_Put` each chunk's results into rank 0's memory through a
//! window on the world communicator over the same bytes ([`ResultRoute::Put`]), or send
//! them back in their `Done` message ([`ResultRoute::Send`]). Rank 0 then runs the
//! single-process baseline, compares element by element and builds the same [`Report`],
//! with an [`MpiReport`] in [`Report::mpi`].
//!
//! Every rank waits with `MPI_Iprobe` and sleeping back-off ([`MpiReport::wait`]), so
//! ranks that outnumber the cores do not take turns spinning. Unless the environment says
//! otherwise, procpool selects Open MPI's `ob1` point-to-point layer with the `self`,
//! `vader` (shared memory) and `tcp` transports and `mpi_yield_when_idle` before
//! `MPI_Init` ([`MpiReport::mca_set`]): starting takes about a third of the time the
//! default transport probing takes.
//!
//! What it does not do that the process pool does: plain MPI cannot replace a dead rank,
//! so there are no restarts or retries; a rank that dies ends the whole job (mpirun stops
//! the others, and rank 0 names the rank, its host and the chunk it was running, or that it
//! died during the baseline or the verification; `procpool --ranks` names a lost rank 0
//! the same way), and a kernel panic ends it with an error naming the same. `procpool
//! --ranks` gives mpirun a private `TMPDIR` ([`run_mpirun`]), removed however the run ends. Streaming to a file, chunk time
//! limits and the threads and single modes are for the process backend.

mod job;
mod launch;
mod window;
mod wire;

pub use launch::{MpirunEnd, error_left_to_launcher, run_mpirun, under_mpirun};

use crate::error::{Error, Result};
pub use crate::lab::model::MpiReport;
use crate::lab::model::Report;
use crate::lab::run::RunOptions;
use crate::workload::{ChunkReducer, Reduce, ReducerOf, Workload};
use serde::de::DeserializeOwned;

/// How to run a job on the MPI backend.
#[derive(Debug, Clone, Default)]
pub struct MpiOptions {
    /// The run: `job.schedule`, `job.chunk_size`, `pool.inflight` (chunks queued per rank),
    /// `baseline`, `repeat`, `warmup` and `pool.supervision.interrupt` apply; the worker
    /// count is the rank count minus one. Fault injection, `output` and a mode other than
    /// processes are refused.
    pub run: RunOptions,
    /// Treat every `node_size` consecutive ranks as one node, instead of asking MPI which
    /// ranks share memory: `Some(1)` sends every result over the inter-node route, to try
    /// it on one machine.
    pub node_size: Option<usize>,
    /// How results of workers on other nodes than rank 0's reach its window.
    pub route: ResultRoute,
}

/// How a worker on another node than rank 0's delivers a chunk's results (workers on rank
/// 0's node write them straight into the shared window either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResultRoute {
    /// `MPI_Put` into rank 0's memory through a window on the world communicator, then
    /// `MPI_Win_flush`, then a 40-byte `Done`: one-sided, rank 0 copies nothing. A third of
    /// the time of `Send` between ranks that share memory, but it needs one-sided
    /// communication between the nodes, which Open MPI 4.1 over TCP does not have (the run
    /// then stops before any chunk, saying so).
    Put,
    /// In the chunk's `Done` message; rank 0 copies them into the window. The default: it
    /// works over any MPI network (docs/mpi.md).
    #[default]
    Send,
}

impl std::fmt::Display for ResultRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResultRoute::Put => "put",
            ResultRoute::Send => "send",
        })
    }
}

/// Runs `workload` on `0..n` across the ranks of the `mpirun` that started this process.
///
/// Call it on every rank, with the same workload and options (rank 0's workload value is
/// what every worker runs). It initializes MPI and finalizes it before returning, so it runs
/// once per process. Rank 0 gets `Some(report)`; the workers get `None`.
///
/// When the job is stopped from outside, plain MPI cannot carry on, and no rank can wait
/// for the others: mpirun stops every rank with SIGTERM when it is itself interrupted or
/// when a rank dies, and SIGKILLs what is left a second later. So, when
/// `options.run.pool.supervision.interrupt` reports the signal, a worker rank exits the
/// process at once with code 128 + the signal, and rank 0 returns
/// [`Error::RankLost`] (a rank on its host is gone: which one, and the chunk it was
/// running or what the job was doing) or [`Error::Interrupted`], without finalizing MPI:
/// exit the process then. mpirun may drop what the ranks print while it stops them: under
/// `procpool --ranks`, rank 0 also leaves the error for the launcher ([`run_mpirun`]) to print.
///
/// Call it before your program starts threads: it sets the Open MPI variables the
/// environment lacks (see [`MpiReport::mca_set`]) before `MPI_Init`, and changing the
/// environment while another thread reads it is undefined behaviour.
///
/// ```no_run
/// use procpool::workload::Hash;
/// use procpool::mpi::{MpiOptions, run};
///
/// // mpirun -np 3 my-program
/// if let Some(report) = run(&Hash { rounds: 50 }, 100_000, &MpiOptions::default())? {
///     println!("{}", procpool::report::render_text(&report));
/// }
/// # Ok::<(), procpool::Error>(())
/// ```
pub fn run<W: Workload + DeserializeOwned>(
    workload: &W,
    n: u64,
    options: &MpiOptions,
) -> Result<Option<Report>> {
    run_with(workload, n, options, None)
}

/// Like [`run`], and reduces too ([`Reduce`], as [`crate::run_reduce`] does): every worker
/// rank reduces each chunk right after computing it and sends the accumulator in its
/// `Done`; rank 0 combines them in chunk order into [`Report::reduction`] and checks that
/// against the single-process output reduced over the same chunks, bit for bit.
pub fn run_reduce<W: Reduce + DeserializeOwned>(
    workload: &W,
    n: u64,
    options: &MpiOptions,
) -> Result<Option<Report>> {
    run_with(workload, n, options, Some(reducer_of::<W>))
}

fn reducer_of<W: Reduce + DeserializeOwned>(workload: &W) -> Box<dyn ChunkReducer<W::Output> + '_> {
    Box::new(ReducerOf(workload))
}

fn run_with<W: Workload + DeserializeOwned>(
    workload: &W,
    n: u64,
    options: &MpiOptions,
    reducer: Option<job::MakeReducer<W>>,
) -> Result<Option<Report>> {
    let init = std::time::Instant::now();
    let mca_set = tune_environment();
    let universe = mpi::initialize().ok_or_else(|| {
        Error::invalid_input("MPI is already initialized in this process: procpool::mpi::run initializes it itself, once")
    })?;
    let result = job::run(&universe, workload, n, options, mca_set, reducer, init);
    match &result {
        // The job was stopped from outside, or the ranks are out of step: MPI_Finalize
        // would wait for ranks that are gone or waiting. The process is about to exit, and
        // mpirun then stops the others (and may drop what this rank prints: under
        // `procpool --ranks`, rank 0 leaves its error for the launcher to print).
        Err(e) if job::stopped(e) => {
            launch::record_stop(e);
            std::mem::forget(universe)
        }
        _ => drop(universe),
    }
    result
}

/// The Open MPI settings procpool chooses when the environment has none: the `ob1`
/// point-to-point layer over shared memory (`vader`) within a node and TCP between nodes,
/// without probing other networks, and yielding when idle. Returns what it set.
fn tune_environment() -> Vec<String> {
    let wanted = [
        ("OMPI_MCA_pml", "ob1"),
        ("OMPI_MCA_btl", "self,vader,tcp"),
        ("OMPI_MCA_mpi_yield_when_idle", "1"),
    ];
    let mut set = Vec::new();
    for (key, value) in wanted {
        if std::env::var_os(key).is_none() {
            // SAFETY: called before MPI_Init, while procpool has started no thread (the CLI
            // and the library's docs ask for the run before any), so nothing reads or
            // writes the environment concurrently.
            unsafe { std::env::set_var(key, value) };
            set.push(format!("{key}={value}"));
        }
    }
    set
}

/// The one-line refusal when `/dev/shm` has less room than the window needs.
pub(crate) fn shm_refusal(free: u64, needed: u64) -> Option<String> {
    // Open MPI adds a little of its own to the window's segment.
    let needed = needed.saturating_add(1 << 20);
    (free < needed).then(|| {
        format!(
            "the MPI shared window needs {} in /dev/shm but it has {} free: make /dev/shm \
             larger (`mount -o remount,size=<bytes> /dev/shm`, or `docker run --shm-size=<bytes>`) \
             or make n smaller",
            crate::units::bytes(u128::from(needed)),
            crate::units::bytes(u128::from(free))
        )
    })
}

/// Files in /dev/shm that Open MPI makes for a job: its shared-memory transport's segments
/// and shared windows.
const OMPI_SHM_PREFIXES: [&str; 2] = ["vader_segment.", "osc_sm."];

/// How old a file must be before it counts as left behind: the ranks of a job that is
/// starting map theirs within microseconds of creating them.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Removes what killed Open MPI jobs left in /dev/shm: files of this user with Open MPI's
/// names, older than [`STALE_AFTER`], that no process maps (a live job's ranks map their
/// segments until they finalize). Returns how many it removed.
pub(crate) fn remove_stale_segments() -> u64 {
    use std::os::unix::fs::MetadataExt;
    let uid = nix::unistd::geteuid().as_raw();
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return 0;
    };
    let candidates: Vec<std::path::PathBuf> = dir
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            OMPI_SHM_PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .filter(|e| {
            e.metadata().is_ok_and(|m| {
                m.uid() == uid
                    && m.modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_AFTER)
            })
        })
        .map(|e| e.path())
        .collect();
    if candidates.is_empty() {
        return 0;
    }
    let mapped = mapped_paths();
    let mut removed = 0;
    for path in candidates {
        if !mapped.contains(&path) && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Every process: its pid and its directory in `/proc`.
fn processes() -> Vec<(u32, std::path::PathBuf)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect()
}

/// Every file some process maps, from `/proc/*/maps`.
fn mapped_paths() -> std::collections::HashSet<std::path::PathBuf> {
    let mut mapped = std::collections::HashSet::new();
    for (_, dir) in processes() {
        let Ok(maps) = std::fs::read_to_string(dir.join("maps")) else {
            continue;
        };
        for line in maps.lines() {
            if let Some(at) = line.find("/dev/shm/") {
                let path = line[at..].trim_end_matches(" (deleted)");
                mapped.insert(std::path::PathBuf::from(path));
            }
        }
    }
    mapped
}

/// Bytes free in `/dev/shm`, where Open MPI puts shared windows.
fn dev_shm_free() -> Option<u64> {
    let s = nix::sys::statvfs::statvfs("/dev/shm").ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_dev_shm_is_refused_naming_both_sizes_and_the_fix() {
        assert_eq!(shm_refusal(1 << 30, 80_000_000), None);
        let why = shm_refusal(64 << 20, 80_000_000).expect("too small");
        assert!(why.contains("/dev/shm"), "{why}");
        assert!(why.contains("--shm-size"), "{why}");
        assert!(!why.contains('\n'), "{why}");
    }
}
