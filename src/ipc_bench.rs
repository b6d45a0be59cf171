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
//!   both cases.
//!
//! The peer is a forked child (channels and the shared mapping are made before the fork, so
//! both sides inherit them). It dies with the parent (`PR_SET_PDEATHSIG`) and is always
//! reaped, killed first on an error. Every transfer is checked: the peer returns the number
//! of messages and bytes it saw and a checksum of their contents, and a mismatch is an
//! error, so the benchmark cannot silently measure nothing.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ipc_channel::TryRecvError;
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcReceiver, IpcSender};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::shm::{Mapping, SharedRegion};
use crate::sys::{ExitCause, Process};

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
}

impl Default for IpcBenchOptions {
    fn default() -> Self {
        IpcBenchOptions {
            round_trips: 20_000,
            sizes: vec![64, 256, 1024, 4096, 16384, 65536, 262_144, 1_048_576],
            bytes_per_size: 1 << 20,
            pin: true,
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

/// What [`run`] measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IpcBenchReport {
    /// Logical CPUs this process may run on.
    pub cores_logical: usize,
    /// Round-trip latency, one entry per placement.
    pub latency: Vec<Latency>,
    /// Throughput, one entry per message size, in the order asked.
    pub throughput: Vec<Throughput>,
    /// How it was measured, and which placements were skipped and why.
    pub note: String,
}

/// The placement names used in [`Latency::placement`].
const UNPINNED: &str = "unpinned";
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
/// after each pinned placement. Throughput runs unpinned, on one peer, for every size: a
/// short untimed warm-up, then 3 timed transfers per transport, interleaved (channel, shm,
/// channel, …), each moving `max(bytes_per_size / size, 16)` messages; the median transfer
/// is reported. Each transfer is verified by the peer's checksum before its time counts.
pub fn run(options: &IpcBenchOptions) -> Result<IpcBenchReport> {
    validate(options)?;
    crate::sys::ensure_single_threaded(
        "ipc-bench forks a peer process",
        "run it before any thread starts, e.g. at the top of main",
    )
    .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let cores_logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let original = sched_getaffinity(Pid::from_raw(0))
        .map_err(|e| Error::Io(std::io::Error::other(format!("sched_getaffinity: {e}"))))?;
    let cpus = crate::sys::allowed_cpus();

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

    let mut throughput = measure_throughput(options, UNPINNED, None)?;
    if options.pin
        && let [parent_cpu, peer_cpu, ..] = cpus[..]
    {
        let _restore = RestoreAffinity(&original);
        if crate::sys::pin_to(parent_cpu).is_ok() {
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
    Ok(IpcBenchReport {
        cores_logical,
        latency,
        throughput,
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

/// Renders the report as two tables and a closing line that compares a chunk message's
/// round trip with moving the largest size through each transport.
pub fn render_text(report: &IpcBenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "procpool ipc-bench: two processes, ipc-channel and shared memory; {}",
        crate::units::count(report.cores_logical, "logical core")
    );
    if !report.latency.is_empty() {
        let _ = writeln!(s, "  round trip of a small message, µs");
        let _ = writeln!(
            s,
            "    {:<10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "placement", "samples", "p50", "p90", "p99", "max", "mean"
        );
        for l in &report.latency {
            let _ = writeln!(
                s,
                "    {:<10} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                l.placement, l.samples, l.p50_us, l.p90_us, l.p99_us, l.max_us, l.mean_us
            );
        }
    }
    if !report.throughput.is_empty() {
        let _ = writeln!(s, "  one-way throughput, MB/s (1 MB = 10^6 bytes)");
        let _ = writeln!(
            s,
            "    {:<10} {:>9} {:>9} {:>9} {:>9} {:>11}",
            "placement", "size", "messages", "channel", "shm", "shm/channel"
        );
        for t in &report.throughput {
            let _ = writeln!(
                s,
                "    {:<10} {:>9} {:>9} {:>9.1} {:>9.1} {:>10.2}×",
                t.placement,
                crate::units::bytes(t.size_bytes as u128),
                t.messages,
                t.channel_mb_s,
                t.shm_mb_s,
                t.shm_mb_s / t.channel_mb_s
            );
        }
    }
    // The note is a list joined with "; ": one item per line.
    for (k, item) in report
        .note
        .split("; ")
        .filter(|i| !i.is_empty())
        .enumerate()
    {
        let label = if k == 0 { "note" } else { "" };
        let _ = writeln!(s, "  {label:<5} {item}");
    }
    if let Some(line) = closing_line(report) {
        let _ = writeln!(s, "{line}");
    }
    s
}

/// "a chunk message costs ~15 µs round trip; 1 MiB through the channel takes X, through
/// shared memory Y: send ranges, not data".
fn closing_line(report: &IpcBenchReport) -> Option<String> {
    let rtt = report
        .latency
        .iter()
        .find(|l| l.placement == UNPINNED)
        .or(report.latency.first())
        .map(|l| format!("a chunk message costs ~{:.0} µs round trip", l.p50_us));
    let largest = report
        .throughput
        .iter()
        .filter(|t| t.placement == UNPINNED)
        .max_by_key(|t| t.size_bytes)
        .map(|t| {
            let per_message = |mb_s: f64| t.size_bytes as f64 / (mb_s * 1e6);
            let (channel, shm) = (per_message(t.channel_mb_s), per_message(t.shm_mb_s));
            let verdict = if shm < channel {
                "send ranges, not data"
            } else {
                "here the channel kept up with shared memory"
            };
            format!(
                "{} through the channel takes {}, through shared memory {}: {verdict}",
                crate::units::bytes(t.size_bytes as u128),
                crate::units::seconds(channel),
                crate::units::seconds(shm)
            )
        });
    match (rtt, largest) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

fn validate(options: &IpcBenchOptions) -> Result<()> {
    if options.round_trips == 0 {
        return Err(Error::InvalidInput(
            "ipc-bench round trips must be at least 1 (got 0)".into(),
        ));
    }
    if options.sizes.is_empty() {
        return Err(Error::InvalidInput(
            "ipc-bench needs at least one message size".into(),
        ));
    }
    if let Some(&bad) = options.sizes.iter().find(|&&s| s == 0 || s > MAX_SIZE) {
        return Err(Error::InvalidInput(format!(
            "ipc-bench message sizes must be 1 B to {} (got {bad})",
            crate::units::bytes(MAX_SIZE as u128)
        )));
    }
    Ok(())
}

/// Gives this process its original CPU affinity back when dropped.
struct RestoreAffinity<'a>(&'a CpuSet);

impl Drop for RestoreAffinity<'_> {
    fn drop(&mut self) {
        let _ = sched_setaffinity(Pid::from_raw(0), self.0);
    }
}

/// Latency with the parent on `parent_cpu` and the peer on `peer_cpu`. The inner `Err` is
/// a placement this machine does not allow (the reason), not a failure of the benchmark.
fn pinned_latency(
    placement: &str,
    original: &CpuSet,
    parent_cpu: usize,
    peer_cpu: usize,
    options: &IpcBenchOptions,
    warmup: usize,
) -> Result<std::result::Result<Latency, String>> {
    let _restore = RestoreAffinity(original);
    if let Err(e) = crate::sys::pin_to(parent_cpu) {
        return Ok(Err(format!(
            "cannot pin this process to CPU {parent_cpu}: {e}"
        )));
    }
    measure_latency(placement, Some(peer_cpu), options.round_trips, warmup).map(Ok)
}

fn measure_latency(
    placement: &str,
    peer_cpu: Option<usize>,
    round_trips: usize,
    warmup: usize,
) -> Result<Latency> {
    let mut peer = Peer::start(peer_cpu, None, None)?;
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..(warmup + round_trips) as u64 {
        let began = Instant::now();
        peer.send(ToPeer::Ping(i), "sending a ping")?;
        // A blocking receive, to time the channel and nothing else; a peer that dies shows
        // as Disconnected.
        let reply = peer.rx.recv();
        let took = began.elapsed();
        match reply {
            Ok(FromPeer::Pong(v)) if v == i.wrapping_add(1) => {}
            Ok(other) => return Err(peer.unexpected(other, "waiting for a pong")),
            Err(e) => return Err(peer.lost("waiting for a pong", &e)),
        }
        if i >= warmup as u64 {
            samples.push(took.as_secs_f64() * 1e6);
        }
    }
    peer.finish()?;
    samples.sort_by(f64::total_cmp);
    Ok(Latency {
        placement: placement.to_string(),
        samples: samples.len(),
        p50_us: percentile(&samples, 50.0),
        p90_us: percentile(&samples, 90.0),
        p99_us: percentile(&samples, 99.0),
        max_us: samples.last().copied().unwrap_or(f64::NAN),
        mean_us: samples.iter().sum::<f64>() / samples.len() as f64,
    })
}

/// Slots in the shared ring for messages of `size` bytes.
fn ring_slots(size: usize) -> usize {
    (RING_BYTES / size).clamp(2, RING_SLOTS)
}

fn measure_throughput(
    options: &IpcBenchOptions,
    placement: &str,
    peer_cpu: Option<usize>,
) -> Result<Vec<Throughput>> {
    let region_len = options
        .sizes
        .iter()
        .map(|&s| ring_slots(s) * s)
        .max()
        .unwrap_or(0);
    let mut region = SharedRegion::new()?;
    region.reset(region_len as u64)?;
    // Mapped before the fork: the peer inherits this very mapping (MAP_SHARED), so both
    // processes see the same pages.
    let mapping = region.map()?;
    let (bytes_tx, bytes_rx) = ipc::bytes_channel()?;
    let mut peer = Peer::start(peer_cpu, Some(bytes_rx), Some(&mapping))?;

    let mut results = Vec::with_capacity(options.sizes.len());
    for &size in &options.sizes {
        let messages = (options.bytes_per_size / size).max(MIN_MESSAGES);
        // The channel's send buffer (and scratch space for the expected tallies).
        let mut buffer = vec![0u8; size];
        // Untimed warm-up: fault in both processes' view of every slot and the channel's
        // buffers.
        let warm = ring_slots(size);
        let expected = expected_tally(&mut buffer, warm);
        channel_transfer(&mut peer, &bytes_tx, &mut buffer, warm, &expected)?;
        shm_transfer(&mut peer, &mapping, size, warm, &expected)?;

        // Timed: REPEATS transfers per transport, interleaved so that a slow spell of the
        // machine hits both; the median of each is reported.
        let expected = expected_tally(&mut buffer, messages);
        let mut channel = Vec::with_capacity(REPEATS);
        let mut shm = Vec::with_capacity(REPEATS);
        for _ in 0..REPEATS {
            channel.push(channel_transfer(
                &mut peer,
                &bytes_tx,
                &mut buffer,
                messages,
                &expected,
            )?);
            shm.push(shm_transfer(
                &mut peer, &mapping, size, messages, &expected,
            )?);
        }
        let mb_s = |mut times: Vec<Duration>| {
            times.sort();
            (messages * size) as f64 / times[times.len() / 2].as_secs_f64() / 1e6
        };
        results.push(Throughput {
            placement: placement.to_string(),
            size_bytes: size,
            channel_mb_s: mb_s(channel),
            shm_mb_s: mb_s(shm),
            messages,
        });
    }
    peer.finish()?;
    Ok(results)
}

/// Sends `messages` byte messages through the channel: each is produced into `buffer`, then
/// sent. The peer reads them all and answers with its tally once, at the end (the channel's
/// `send` blocks while the socket buffer is full, so the peer paces us). Returns the time
/// from the start message to the tally.
fn channel_transfer(
    peer: &mut Peer,
    bytes_tx: &IpcBytesSender,
    buffer: &mut [u8],
    messages: usize,
    expected: &Tally,
) -> Result<Duration> {
    let began = Instant::now();
    peer.send(
        ToPeer::Bytes {
            messages: messages as u64,
        },
        "starting a channel transfer",
    )?;
    for i in 0..messages {
        produce(buffer, i);
        if let Err(e) = bytes_tx.send(buffer) {
            return Err(peer.lost("sending byte messages", &e));
        }
    }
    let reply = peer.reply("waiting for the channel transfer's tally")?;
    let elapsed = began.elapsed();
    peer.check_tally(reply, expected, "channel", buffer.len())?;
    Ok(elapsed)
}

/// Hands `messages` messages of `size` bytes over through the shared ring: each is produced
/// straight into a free slot, then announced with `Ready(offset, len)`; the peer reads the
/// slot and acks. A slot is reused only after its previous message was acknowledged.
fn shm_transfer(
    peer: &mut Peer,
    mapping: &Mapping,
    size: usize,
    messages: usize,
    expected: &Tally,
) -> Result<Duration> {
    let slots = ring_slots(size);
    let mut acked = 0usize;
    let began = Instant::now();
    for i in 0..messages {
        if i >= slots {
            // The ack of message i - slots: acks arrive in order, so slot i % slots is free.
            peer.ack()?;
            acked += 1;
        }
        let offset = (i % slots) * size;
        // SAFETY: this slot's previous message (i - slots) has been acknowledged, after which
        // the peer never touches the slot again until our Ready for message i, sent below once
        // this slice is gone; no other process maps the region.
        let slot = unsafe { mapping.slice_mut(offset..offset + size) };
        produce(slot, i);
        peer.send(
            ToPeer::Ready {
                offset: offset as u64,
                len: size as u64,
            },
            "sending a ready message",
        )?;
    }
    while acked < messages {
        peer.ack()?;
        acked += 1;
    }
    peer.send(ToPeer::ShmEnd, "ending a shared-memory transfer")?;
    let reply = peer.reply("waiting for the shared-memory transfer's tally")?;
    let elapsed = began.elapsed();
    peer.check_tally(reply, expected, "shared-memory", size)?;
    Ok(elapsed)
}

/// Writes message number `i`: every byte, as a producer writing its results would (a
/// pattern that depends on `i`), then `i` itself in the first (up to 8) bytes, so no two
/// messages are alike.
fn produce(message: &mut [u8], i: usize) {
    let seed = (i as u8).wrapping_add(7);
    for (j, byte) in message.iter_mut().enumerate() {
        *byte = (j as u8).wrapping_mul(31).wrapping_add(seed);
    }
    let n = message.len().min(8);
    message[..n].copy_from_slice(&(i as u64).to_le_bytes()[..n]);
}

/// What the peer saw: how many messages and bytes, and an order-sensitive checksum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    messages: u64,
    bytes: u64,
    checksum: u64,
}

impl Tally {
    fn add(&mut self, message: &[u8]) {
        self.messages += 1;
        self.bytes += message.len() as u64;
        self.checksum = self
            .checksum
            .wrapping_mul(0x0100_0000_01b3)
            .wrapping_add(message_sum(message));
    }
}

/// The wrapping sum of the message read as little-endian `u64` words (the tail padded with
/// zeros): reads every byte, fast enough not to hide the transport's cost.
fn message_sum(message: &[u8]) -> u64 {
    let mut words = message.chunks_exact(8);
    let mut sum = 0u64;
    for w in &mut words {
        sum = sum.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let mut tail = [0u8; 8];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    sum.wrapping_add(u64::from_le_bytes(tail))
}

/// The tally the peer must report for `messages` messages of `scratch.len()` bytes.
fn expected_tally(scratch: &mut [u8], messages: usize) -> Tally {
    let mut tally = Tally::default();
    for i in 0..messages {
        produce(scratch, i);
        tally.add(scratch);
    }
    tally
}

/// Parent to peer.
#[derive(Debug, Serialize, Deserialize)]
enum ToPeer {
    /// Answer `Pong(n + 1)`.
    Ping(u64),
    /// Read this many messages from the byte channel, then answer with their `Tally`.
    Bytes { messages: u64 },
    /// A message waits in the shared region at `offset..offset + len`: read it, then `Ack`.
    Ready { offset: u64, len: u64 },
    /// Answer with the `Tally` of the shared-memory messages since the last `ShmEnd`.
    ShmEnd,
    /// Exit with status 0.
    Stop,
}

/// Peer to parent.
#[derive(Debug, Serialize, Deserialize)]
enum FromPeer {
    /// Started (and pinned, if asked).
    Ready,
    Pong(u64),
    /// A shared-memory message was read; its slot is free.
    Ack,
    Tally(Tally),
    /// The peer cannot go on; it exits next.
    Failed(String),
}

/// The forked peer, seen from the parent. Dropping it kills and reaps the process (a no-op
/// kill once it is reaped), so no error path leaves a child behind.
struct Peer {
    child: Process,
    tx: IpcSender<ToPeer>,
    rx: IpcReceiver<FromPeer>,
}

impl Peer {
    /// Forks the peer, pinned to `cpu` if given, and waits for its `Ready`.
    fn start(
        cpu: Option<usize>,
        bytes: Option<IpcBytesReceiver>,
        shm: Option<&Mapping>,
    ) -> Result<Peer> {
        let parent = nix::unistd::getpid();
        let (tx, peer_rx) = ipc::channel::<ToPeer>()?;
        let (peer_tx, rx) = ipc::channel::<FromPeer>()?;
        let pid = crate::sys::fork_child(move || {
            peer_main(parent, cpu, &peer_rx, &peer_tx, bytes.as_ref(), shm)
        })
        .map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot fork the ipc-bench peer: {e}"),
            ))
        })?;
        // The closure, holding the peer's ends of the channels, was dropped here when
        // `fork_child` returned: only the peer holds them now, so its death shows as
        // Disconnected on our side.
        let mut peer = Peer {
            child: Process::from_pid(pid),
            tx,
            rx,
        };
        match peer.reply("starting")? {
            FromPeer::Ready => Ok(peer),
            other => Err(peer.unexpected(other, "starting")),
        }
    }

    fn send(&mut self, message: ToPeer, what: &str) -> Result<()> {
        match self.tx.send(message) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.lost(what, &e)),
        }
    }

    /// A control reply, within [`PEER_TIMEOUT`].
    fn reply(&mut self, what: &str) -> Result<FromPeer> {
        match self.rx.try_recv_timeout(PEER_TIMEOUT) {
            Ok(message) => Ok(message),
            Err(TryRecvError::Empty) => Err(Error::Ipc(format!(
                "the ipc-bench peer (pid {}) did not answer within {PEER_TIMEOUT:?} while {what}",
                self.child.id()
            ))),
            Err(TryRecvError::IpcError(e)) => Err(self.lost(what, &e)),
        }
    }

    /// Waits (blocking, as in the timed loop) for one shared-memory `Ack`.
    fn ack(&mut self) -> Result<()> {
        match self.rx.recv() {
            Ok(FromPeer::Ack) => Ok(()),
            Ok(other) => Err(self.unexpected(other, "waiting for an ack")),
            Err(e) => Err(self.lost("waiting for an ack", &e)),
        }
    }

    fn check_tally(
        &mut self,
        reply: FromPeer,
        expected: &Tally,
        transport: &str,
        size: usize,
    ) -> Result<()> {
        match reply {
            FromPeer::Tally(got) if got == *expected => Ok(()),
            FromPeer::Tally(got) => Err(Error::Ipc(format!(
                "the ipc-bench {transport} transfer of {}-byte messages arrived wrong: the peer \
                 saw {} messages, {} bytes, checksum {:#x}; expected {} messages, {} bytes, \
                 checksum {:#x}",
                size,
                got.messages,
                got.bytes,
                got.checksum,
                expected.messages,
                expected.bytes,
                expected.checksum
            ))),
            other => Err(self.unexpected(other, "waiting for a tally")),
        }
    }

    /// The error for a reply that is not the one expected.
    fn unexpected(&mut self, message: FromPeer, what: &str) -> Error {
        match message {
            FromPeer::Failed(why) => Error::Ipc(format!(
                "the ipc-bench peer (pid {}) failed while {what}: {why}",
                self.child.id()
            )),
            other => Error::Ipc(format!(
                "the ipc-bench peer (pid {}) sent {other:?} while {what}",
                self.child.id()
            )),
        }
    }

    /// The error for a broken channel: how the peer ended, if it did.
    fn lost(&mut self, what: &str, error: &dyn std::fmt::Display) -> Error {
        match self.exit_within(Duration::from_secs(1)) {
            Some(cause) => Error::Ipc(format!(
                "the ipc-bench peer (pid {}) {cause} while {what}",
                self.child.id()
            )),
            None => Error::Ipc(format!(
                "the channel to the ipc-bench peer (pid {}) failed while {what}: {error}",
                self.child.id()
            )),
        }
    }

    /// Reaps the peer if it exits within `grace`.
    fn exit_within(&mut self, grace: Duration) -> Option<ExitCause> {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(cause)) => return Some(cause),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => return None,
            }
        }
    }

    /// Asks the peer to stop and reaps it; an exit other than status 0 is an error.
    fn finish(mut self) -> Result<()> {
        self.send(ToPeer::Stop, "stopping")?;
        match self.exit_within(PEER_TIMEOUT) {
            Some(ExitCause::Exited(0)) => Ok(()),
            Some(cause) => Err(Error::Ipc(format!(
                "the ipc-bench peer (pid {}) {cause} when asked to stop",
                self.child.id()
            ))),
            None => Err(Error::Ipc(format!(
                "the ipc-bench peer (pid {}) did not stop within {PEER_TIMEOUT:?}; it was killed",
                self.child.id()
            ))),
        }
        // `self` drops here: kill (a no-op once reaped) and reap.
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer process: arm the death signal, pin if asked, say Ready, then serve. Returns the
/// exit status.
fn peer_main(
    parent: Pid,
    cpu: Option<usize>,
    rx: &IpcReceiver<ToPeer>,
    tx: &IpcSender<FromPeer>,
    bytes: Option<&IpcBytesReceiver>,
    shm: Option<&Mapping>,
) -> i32 {
    // It inherited a copy of the parent's sending end, so its receive never sees the
    // parent go: the death signal is what ends it then.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != parent
    {
        return 1;
    }
    if let Some(cpu) = cpu
        && let Err(e) = crate::sys::pin_to(cpu)
    {
        let _ = tx.send(FromPeer::Failed(format!("cannot pin to CPU {cpu}: {e}")));
        return 3;
    }
    if tx.send(FromPeer::Ready).is_err() {
        return 1;
    }
    match serve(rx, tx, bytes, shm) {
        Ok(()) => 0,
        Err(message) => {
            let _ = tx.send(FromPeer::Failed(message));
            2
        }
    }
}

fn serve(
    rx: &IpcReceiver<ToPeer>,
    tx: &IpcSender<FromPeer>,
    bytes: Option<&IpcBytesReceiver>,
    shm: Option<&Mapping>,
) -> std::result::Result<(), String> {
    let send = |m: FromPeer| tx.send(m).map_err(|e| format!("cannot answer: {e}"));
    let mut shm_tally = Tally::default();
    loop {
        let message = rx.recv().map_err(|e| format!("cannot receive: {e}"))?;
        match message {
            ToPeer::Ping(n) => send(FromPeer::Pong(n.wrapping_add(1)))?,
            ToPeer::Bytes { messages } => {
                let bytes = bytes.ok_or("byte messages announced, but no byte channel")?;
                let mut tally = Tally::default();
                for _ in 0..messages {
                    let message = bytes
                        .recv()
                        .map_err(|e| format!("cannot receive a byte message: {e}"))?;
                    tally.add(&message);
                }
                send(FromPeer::Tally(tally))?;
            }
            ToPeer::Ready { offset, len } => {
                let shm = shm.ok_or("a shared-memory message, but no shared region")?;
                let range = usize::try_from(offset)
                    .ok()
                    .zip(usize::try_from(len).ok())
                    .and_then(|(o, l)| Some(o..o.checked_add(l)?))
                    .filter(|r| r.end <= shm.len())
                    .ok_or_else(|| {
                        format!(
                            "slot {offset}+{len} lies outside the region of {} bytes",
                            shm.len()
                        )
                    })?;
                // SAFETY: the parent wrote this slot before sending Ready and writes it
                // again only after our Ack (sent below, once this slice is gone).
                let message = unsafe { shm.slice(range) };
                shm_tally.add(message);
                send(FromPeer::Ack)?;
            }
            ToPeer::ShmEnd => send(FromPeer::Tally(std::mem::take(&mut shm_tally)))?,
            ToPeer::Stop => return Ok(()),
        }
    }
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

    fn synthetic() -> IpcBenchReport {
        IpcBenchReport {
            cores_logical: 2,
            latency: vec![
                Latency {
                    placement: "unpinned".into(),
                    samples: 20000,
                    p50_us: 14.8,
                    p90_us: 17.25,
                    p99_us: 31.0,
                    max_us: 412.5,
                    mean_us: 15.6,
                },
                Latency {
                    placement: "same-cpu".into(),
                    samples: 20000,
                    p50_us: 6.9,
                    p90_us: 7.4,
                    p99_us: 12.0,
                    max_us: 98.0,
                    mean_us: 7.1,
                },
            ],
            throughput: vec![
                Throughput {
                    placement: "unpinned".into(),
                    size_bytes: 64,
                    channel_mb_s: 20.0,
                    shm_mb_s: 8.0,
                    messages: 65536,
                },
                Throughput {
                    placement: "unpinned".into(),
                    size_bytes: 1_048_576,
                    channel_mb_s: 1048.576,
                    shm_mb_s: 5242.88,
                    messages: 16,
                },
            ],
            note: "cross-cpu skipped: this process may run on one CPU only; throughput: \
                   unpinned"
                .into(),
        }
    }

    #[test]
    fn render_text_snapshot() {
        let expected = "\
procpool ipc-bench: two processes, ipc-channel and shared memory; 2 logical cores
  round trip of a small message, µs
    placement   samples      p50      p90      p99      max     mean
    unpinned      20000     14.8     17.2     31.0    412.5     15.6
    same-cpu      20000      6.9      7.4     12.0     98.0      7.1
  one-way throughput, MB/s (1 MB = 10^6 bytes)
    placement       size  messages   channel       shm shm/channel
    unpinned        64 B     65536      20.0       8.0       0.40×
    unpinned       1 MiB        16    1048.6    5242.9       5.00×
  note  cross-cpu skipped: this process may run on one CPU only
        throughput: unpinned
a chunk message costs ~15 µs round trip; 1 MiB through the channel takes 1.00 ms, through shared memory 200.0 µs: send ranges, not data
";
        assert_eq!(render_text(&synthetic()), expected);
    }

    #[test]
    fn closing_line_says_so_when_the_channel_keeps_up() {
        let mut r = synthetic();
        r.throughput[1].shm_mb_s = 500.0;
        let text = render_text(&r);
        assert!(
            text.ends_with("here the channel kept up with shared memory\n"),
            "{text}"
        );
        r.latency.clear();
        assert!(
            render_text(&r)
                .lines()
                .last()
                .unwrap()
                .starts_with("1 MiB through the channel"),
        );
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
                "round trips",
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

    #[test]
    fn checksum_sees_every_byte_and_the_order() {
        for size in [1, 7, 8, 9, 64, 1000] {
            let mut data = vec![0u8; size];
            let good = expected_tally(&mut data, 3);
            assert_eq!(good.messages, 3);
            assert_eq!(good.bytes, 3 * size as u64);
            // Changing any byte of any message changes the checksum.
            for at in [0, size / 2, size - 1] {
                let mut t = Tally::default();
                for i in 0..3 {
                    produce(&mut data, i);
                    let mut m = data.clone();
                    if i == 1 {
                        m[at] ^= 0x40;
                    }
                    t.add(&m);
                }
                assert_ne!(t, good, "size {size}, byte {at}");
            }
            // So does the order of the messages.
            let mut swapped = Tally::default();
            for i in [1, 0, 2] {
                produce(&mut data, i);
                swapped.add(&data);
            }
            assert_ne!(swapped.checksum, good.checksum, "size {size}");
        }
    }

    #[test]
    fn ring_has_two_to_eight_slots() {
        assert_eq!(ring_slots(64), 8);
        assert_eq!(ring_slots(1 << 20), 8);
        assert_eq!(ring_slots(4 << 20), 2);
        assert_eq!(ring_slots(MAX_SIZE), 2);
    }
}
