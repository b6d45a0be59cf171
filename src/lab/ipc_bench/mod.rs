//! `procpool ipc-bench`: the numbers behind "send ranges, not data", measured on this machine.
//!
//! The pool sends each worker a chunk's *range* (a dozen bytes) over `ipc-channel` and lets
//! the worker write its results straight into shared memory. Why not send the data itself?
//! This module measures the answer between two processes of this machine:
//!
//! - **latency**: the round trip of a small message (a `u64`) over a pair of ipc-channels,
//!   unpinned, and optionally with both processes pinned to one CPU ("same-cpu") or to two
//!   different CPUs ("cross-cpu");
//! - **throughput**: the same bytes moved one way, in messages of 64 B to 1 MiB. Through the
//!   channel, the parent produces each message in a buffer and sends it as an ipc-channel
//!   byte message (`IpcBytesSender`, no serialization). Through shared memory, it produces
//!   the message straight into a slot of a small ring in a memfd and sends a tiny
//!   `Ready(offset, len)`; the peer reads the slot and acknowledges it, so the figure
//!   includes the notification a real handover needs. The peer reads (sums) every byte in
//!   both cases;
//! - **the queue** (`--dispatch queue`, which hands out chunks with no message at all): how
//!   many chunks per second one process claims from the pool's shared-memory control block,
//!   and two processes contending for it; and the round trip of a futex wake-up, the way a
//!   sleeping worker or parent is woken;
//! - **the start of a worker** by each method (`spawn`, `fork`, `forkserver`): the time to a
//!   ready 1-worker pool, the methods interleaved.
//!
//! The peer is a forked child (channels and the shared mapping are made before the fork, so
//! both sides inherit them). It dies with the parent (`PR_SET_PDEATHSIG`) and is always
//! reaped, killed first on an error. Every transfer is checked: the peer returns the number
//! of messages and bytes it saw and a checksum of their contents, and a mismatch is an
//! error, so the benchmark cannot silently measure nothing.

use std::time::{Duration, Instant};

use ipc_channel::TryRecvError;
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcReceiver, IpcSender};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use latency::*;
use peer::*;
use queue::*;
pub use start::StartCost;
use start::*;
use throughput::*;

mod latency;
mod peer;
mod queue;
mod start;
mod throughput;

use crate::engine::shm::{Mapping, SharedRegion};
use crate::engine::sys::{ExitCause, Process};

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct IpcBenchOptions {
    /// Timed round trips per placement (after a warm-up of a tenth of this, 10 to 1000).
    /// Default 20 000.
    pub round_trips: usize,
    /// Message sizes in bytes for the throughput table. Default 64 B to 1 MiB, ×4 each step.
    pub sizes: Vec<usize>,
    /// Bytes moved per size, per transport and per timed repeat (there are 3, and the median
    /// is reported); at least 16 messages are sent whatever the size. Default 1 MiB:
    /// small messages are bound by their per-message cost, so 16 384 of 64 B already give
    /// a stable figure, and the whole run stays near 1–2 s.
    pub bytes_per_size: usize,
    /// Also measure latency with both processes pinned (same CPU, then two CPUs). Default
    /// true.
    pub pin: bool,
    /// Chunks in each timed run of the queue: a posting of this many chunks, claimed until
    /// none is left, 3 times by one process and 3 times by two (the medians are reported).
    /// Default 1 000 000: a few tens of milliseconds a run.
    pub claims: usize,
    /// 1-worker pools built and timed per start method (after one untimed each), the
    /// methods interleaved. Default 21: a few tenths of a second in all.
    pub starts: usize,
}

impl Default for IpcBenchOptions {
    fn default() -> Self {
        IpcBenchOptions {
            round_trips: 20_000,
            sizes: vec![64, 256, 1024, 4096, 16384, 65536, 262_144, 1_048_576],
            bytes_per_size: 1 << 20,
            pin: true,
            claims: 1_000_000,
            starts: 21,
        }
    }
}

/// Round-trip latency of a small message between two processes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Where the two processes ran: "unpinned", "same-cpu" or "cross-cpu".
    pub placement: String,
    /// Timed round trips.
    pub samples: usize,
    /// Median round trip, in microseconds.
    pub p50_us: f64,
    /// 90th percentile, in microseconds.
    pub p90_us: f64,
    /// 99th percentile, in microseconds.
    pub p99_us: f64,
    /// Slowest round trip, in microseconds.
    pub max_us: f64,
    /// Mean round trip, in microseconds.
    pub mean_us: f64,
}

/// One-way throughput for one message size, through the channel and through shared memory.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Throughput {
    /// Where the two processes ran: `"unpinned"` or `"cross-cpu"` (pinned to two CPUs).
    pub placement: String,
    /// Bytes per message.
    pub size_bytes: usize,
    /// ipc-channel byte messages, in MB/s (1 MB = 10^6 bytes).
    pub channel_mb_s: f64,
    /// Shared memory plus a ready message and an acknowledgement per message, in MB/s.
    pub shm_mb_s: f64,
    /// Messages sent through each transport in each timed repeat.
    pub messages: usize,
}

/// The shared-memory chunk queue (`--dispatch queue`): claims (both processes unpinned),
/// and futex wake-ups (per placement, as [`IpcBenchReport::latency`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueueBench {
    /// Chunks in each timed run (every run claims them all).
    pub claims: u64,
    /// Chunks claimed per second by one process alone (median of 3 runs).
    pub solo_claims_per_s: f64,
    /// Chunks claimed per second by two processes claiming from the same counter, both
    /// together (median of 3 runs).
    pub contended_claims_per_s: f64,
    /// The peer's share of the claims in that median contended run (0.5: even).
    pub peer_share: f64,
    /// Round trips of a futex wake-up, one entry per placement, as for [`Latency`].
    pub futex: Vec<FutexLatency>,
}

/// Round trip of a futex wake-up: one process sets a shared word and wakes the other, which
/// sets a second word and wakes the first, the way the queue wakes a sleeping worker or
/// parent.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FutexLatency {
    /// The round trips, in the same shape (and JSON keys) as a message's.
    #[serde(flatten)]
    pub round_trip: Latency,
    /// Share of the futex waits, both sides, that slept in the kernel; the others found the
    /// word already changed and did not sleep.
    pub slept_share: f64,
}

/// What [`run`] measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IpcBenchReport {
    /// The schema and procpool versions, the start time and the machine (flattened).
    #[serde(flatten)]
    pub meta: crate::lab::meta::Meta,
    /// Logical CPUs this process may run on.
    pub cores_logical: usize,
    /// Round-trip latency, one entry per placement.
    pub latency: Vec<Latency>,
    /// The shared-memory queue beside the channel's round trip.
    pub queue: QueueBench,
    /// Throughput, one entry per message size, in the order asked.
    pub throughput: Vec<Throughput>,
    /// The start of one worker, one entry per start method: `spawn`, `fork`, `forkserver`.
    pub worker_start: Vec<StartCost>,
    /// How it was measured, and which placements were skipped and why.
    pub note: String,
}

/// The placement names used in [`Latency::placement`].
pub(crate) const UNPINNED: &str = "unpinned";
const SAME_CPU: &str = "same-cpu";
const CROSS_CPU: &str = "cross-cpu";

/// The fewest messages sent per size, whatever `bytes_per_size` says.
const MIN_MESSAGES: usize = 16;
/// The largest message size accepted (the channel side holds a whole message in memory on
/// each end, the shared side two slots of it).
const MAX_SIZE: usize = 256 << 20;
/// Shared-memory ring: up to 8 slots, at most this many bytes (but at least 2 slots).
const RING_BYTES: usize = 8 << 20;
const RING_SLOTS: usize = 8;
/// Timed transfers per size and transport; the median is reported.
const REPEATS: usize = 3;
/// How long the peer may take to answer a control message or to exit.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the benchmark. Forks a peer process (so this must be called while the process is
/// single-threaded, e.g. at the top of main; otherwise it returns an error saying so).
///
/// Latency runs first, one fresh peer per placement; the parent's CPU affinity is restored
/// after each pinned placement. The queue runs next, unpinned, on a peer of its own: a
/// warm-up, then 3 claim runs alone and 3 with the peer, interleaved; then a quarter as
/// many futex round trips as message round trips, in the same placements as the latency.
/// Throughput runs unpinned, on one peer, for every size: a short untimed warm-up, then 3
/// timed transfers per transport, interleaved (channel, shm, channel, …), each moving
/// `max(bytes_per_size / size, 16)` messages; the median transfer is reported. Each
/// transfer is verified by the peer's checksum before its time counts. Last, the start of
/// a worker: a 1-worker pool built by each method in turn, `starts` times (see
/// [`StartCost`]); `spawn` and `forkserver` need the fork server that [`crate::init`]
/// starts, `fork` a single-threaded process at each build.
pub fn run(options: &IpcBenchOptions) -> Result<IpcBenchReport> {
    validate(options)?;
    crate::engine::sys::ensure_single_threaded(
        "ipc-bench forks a peer process",
        "run it before any thread starts, e.g. at the top of main",
    )
    .map_err(|e| Error::invalid_input(e.to_string()))?;
    let started = std::time::SystemTime::now();
    let cores_logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let original = sched_getaffinity(Pid::from_raw(0))
        .map_err(|e| Error::Io(std::io::Error::other(format!("sched_getaffinity: {e}"))))?;
    let cpus = crate::engine::sys::allowed_cpus();

    let warmup = (options.round_trips / 10).clamp(10, 1000);
    let mut notes = vec![format!(
        "latency: {warmup} warm-up then {} timed round trips of a u64 per placement; \
         percentiles by linear interpolation",
        options.round_trips
    )];
    let mut latency = vec![measure_latency(
        UNPINNED,
        None,
        options.round_trips,
        warmup,
    )?];
    if options.pin {
        let same = cpus[0];
        match pinned_latency(SAME_CPU, &original, same, same, options, warmup)? {
            Ok(l) => {
                latency.push(l);
                notes.push(format!("same-cpu: both processes on CPU {same}"));
            }
            Err(why) => notes.push(format!("same-cpu skipped: {why}")),
        }
        if let [parent_cpu, peer_cpu, ..] = cpus[..] {
            match pinned_latency(CROSS_CPU, &original, parent_cpu, peer_cpu, options, warmup)? {
                Ok(l) => {
                    latency.push(l);
                    notes.push(format!(
                        "cross-cpu: parent on CPU {parent_cpu}, peer on CPU {peer_cpu}"
                    ));
                }
                Err(why) => notes.push(format!("cross-cpu skipped: {why}")),
            }
        } else {
            notes.push("cross-cpu skipped: this process may run on one CPU only".into());
        }
    } else {
        notes.push("pinned placements not measured (pinning off)".into());
    }

    let queue = measure_queue(options, &original, &cpus, &mut notes)?;

    let mut throughput = measure_throughput(options, UNPINNED, None)?;
    if options.pin
        && let [parent_cpu, peer_cpu, ..] = cpus[..]
    {
        let _restore = RestoreAffinity(&original);
        if crate::engine::sys::pin_to(parent_cpu).is_ok() {
            throughput.extend(measure_throughput(options, CROSS_CPU, Some(peer_cpu))?);
        }
    }
    notes.push(
        "throughput: unpinned, and pinned to two CPUs (cross-cpu); one way, median of 3, 1 MB \
         = 10^6 bytes; channel = each \
         message written into a buffer, then sent as an ipc-channel byte message; shm = each \
         message written straight into a memfd slot, then a ready message and an ack; every \
         transfer verified by checksum"
            .into(),
    );
    let worker_start = measure_starts(options.starts)?;
    notes.push(format!(
        "worker start: a 1-worker pool built by each method in turn, {} times after one \
         untimed (build: until the pool is ready to take a job, start: the pool's own \
         spawn_time within it)",
        options.starts
    ));
    for s in &worker_start {
        if let Some(why) = &s.skipped {
            notes.push(format!("{} skipped: {why}", s.method));
        }
    }
    Ok(IpcBenchReport {
        // Read last: sysinfo may start threads, and the peers are forked.
        meta: crate::lab::meta::Meta::new(started, &crate::lab::Machine::read()),
        cores_logical,
        latency,
        queue,
        throughput,
        worker_start,
        note: notes.join("; "),
    })
}

/// The `p`-th percentile (`p` in percent, 0 to 100, clamped) of `sorted` (ascending), by
/// linear interpolation between the two nearest ranks (numpy's default, Excel's
/// `PERCENTILE.INC`): rank `p / 100 × (n − 1)`, counted from 0. NaN for an empty slice or a
/// NaN `p`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() || p.is_nan() {
        return f64::NAN;
    }
    let rank = p.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

fn validate(options: &IpcBenchOptions) -> Result<()> {
    if options.round_trips == 0 {
        return Err(Error::invalid(
            "round_trips",
            "`round_trips` must be at least 1 (got 0)",
        ));
    }
    if options.claims == 0 {
        return Err(Error::invalid(
            "claims",
            "`claims` must be at least 1 (got 0)",
        ));
    }
    if options.starts == 0 {
        return Err(Error::invalid(
            "starts",
            "`starts` must be at least 1 (got 0)",
        ));
    }
    if options.sizes.is_empty() {
        return Err(Error::invalid(
            "sizes",
            "ipc-bench needs at least one message size in `sizes`",
        ));
    }
    if let Some(&bad) = options.sizes.iter().find(|&&s| s == 0 || s > MAX_SIZE) {
        return Err(Error::invalid(
            "sizes",
            format!(
                "ipc-bench message `sizes` must be 1 B to {} (got {bad})",
                crate::units::bytes(MAX_SIZE as u128)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_between_nearest_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 25.0), 2.0);
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 100.0), 5.0);
        assert!((percentile(&v, 90.0) - 4.6).abs() < 1e-12);
        assert!((percentile(&v, 99.0) - 4.96).abs() < 1e-12);
        assert_eq!(percentile(&[10.0, 20.0], 50.0), 15.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        // Out of range clamps; nothing to rank gives NaN.
        assert_eq!(percentile(&v, 150.0), 5.0);
        assert_eq!(percentile(&v, -3.0), 1.0);
        assert!(percentile(&[], 50.0).is_nan());
        assert!(percentile(&v, f64::NAN).is_nan());
    }

    #[test]
    fn run_refuses_a_process_with_threads() {
        // Keep a second thread alive for the whole call, whatever the harness does.
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            let _ = stop_rx.recv();
        });
        let err = run(&IpcBenchOptions::default()).unwrap_err();
        drop(stop_tx);
        helper.join().unwrap();
        let text = err.to_string();
        assert!(err.is_invalid_input(), "{text}");
        assert!(text.contains("threads"), "{text}");
        assert!(text.contains("single-threaded"), "{text}");
    }

    #[test]
    fn bad_options_are_refused_before_anything_starts() {
        let base = IpcBenchOptions::default();
        let cases = [
            (
                IpcBenchOptions {
                    round_trips: 0,
                    ..base.clone()
                },
                "`round_trips`",
            ),
            (
                IpcBenchOptions {
                    sizes: vec![],
                    ..base.clone()
                },
                "at least one message size",
            ),
            (
                IpcBenchOptions {
                    claims: 0,
                    ..base.clone()
                },
                "`claims`",
            ),
            (
                IpcBenchOptions {
                    starts: 0,
                    ..base.clone()
                },
                "`starts`",
            ),
            (
                IpcBenchOptions {
                    sizes: vec![64, 0],
                    ..base.clone()
                },
                "(got 0)",
            ),
        ];
        for (options, words) in cases {
            let err = run(&options).unwrap_err();
            assert!(err.is_invalid_input(), "{err}");
            assert!(err.to_string().contains(words), "{err}");
        }
    }

    #[test]
    fn defaults_cover_64_bytes_to_1_mib() {
        let o = IpcBenchOptions::default();
        assert_eq!(o.sizes.first(), Some(&64));
        assert_eq!(o.sizes.last(), Some(&(1 << 20)));
        assert!(o.sizes.windows(2).all(|w| w[1] == w[0] * 4));
        assert!(o.pin);
    }
}
