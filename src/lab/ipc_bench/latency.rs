//! Round-trip latency of a small message between two processes, pinned or not.

use super::*;

/// Gives this process its original CPU affinity back when dropped.
pub(super) struct RestoreAffinity<'a>(pub(super) &'a CpuSet);

impl Drop for RestoreAffinity<'_> {
    fn drop(&mut self) {
        let _ = sched_setaffinity(Pid::from_raw(0), self.0);
    }
}

/// Latency with the parent on `parent_cpu` and the peer on `peer_cpu`. The inner `Err` is
/// a placement this machine does not allow (the reason), not a failure of the benchmark.
pub(super) fn pinned_latency(
    placement: &str,
    original: &CpuSet,
    parent_cpu: usize,
    peer_cpu: usize,
    options: &IpcBenchOptions,
    warmup: usize,
) -> Result<std::result::Result<Latency, String>> {
    let _restore = RestoreAffinity(original);
    if let Err(e) = crate::engine::sys::pin_to(parent_cpu) {
        return Ok(Err(format!(
            "cannot pin this process to CPU {parent_cpu}: {e}"
        )));
    }
    measure_latency(placement, Some(peer_cpu), options.round_trips, warmup).map(Ok)
}

pub(super) fn measure_latency(
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
