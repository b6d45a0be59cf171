//! The shared-memory chunk queue beside the channel: how fast chunks are claimed from it,
//! by one process alone and by two contending for the same counter, and how long a futex
//! wake-up takes from one process to another and back.
//!
//! The claims go through the pool's own control block ([`Control::claim`], the very call a
//! worker makes with `--dispatch queue`), read-only: this module opens postings and claims
//! from them as the pool and its workers do, and changes nothing in the engine. The futex
//! words are two `u32`s, on cache lines of their own, in a page of the same memfd.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::engine::control::{
    Control, Posting, Woke, control_len, futex_wait, futex_wake, futex_word, monotonic_ns,
};

/// Slots of the control area: the parent claims as worker 0, the peer as worker 1.
const PARENT: usize = 0;
const PEER: usize = 1;
/// The futex words' offsets in their page: the parent's ping and the peer's pong, and the
/// word that starts a contended claim run (the posting id, once both are inside it).
const PING: usize = 0;
const PONG: usize = 64;
const GO: usize = 128;
/// A futex waiter looks up (at the peer, at the clock) this often while it waits.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// The queue's shared memory, made before the peer forks so both processes inherit the
/// same mappings (`MAP_SHARED`): the engine's control area for two workers, and one page
/// for the futex words.
pub(super) struct QueueArea {
    control: Control,
    futex: Mapping,
    /// The memfd itself; the mappings above keep its pages alive too.
    _region: SharedRegion,
}

impl QueueArea {
    pub(super) fn new() -> Result<Self> {
        let mut region = SharedRegion::with_control(control_len(2))?;
        region.reset(4096)?;
        Ok(QueueArea {
            control: region.control()?,
            futex: region.map()?,
            _region: region,
        })
    }

    fn ping(&self) -> &AtomicU32 {
        futex_word(&self.futex, PING)
    }

    fn pong(&self) -> &AtomicU32 {
        futex_word(&self.futex, PONG)
    }

    fn go(&self) -> &AtomicU32 {
        futex_word(&self.futex, GO)
    }
}

/// A posting of `chunks` one-element chunks, dynamic schedule, for two workers.
fn posting(id: u64, chunks: u64) -> Posting {
    Posting::unit_chunks(id, chunks, 2)
}

/// Worker `w` claims from posting `id` until nothing is left. Returns its claims and when
/// it finished (CLOCK_MONOTONIC ns).
fn claim_all(control: &Control, w: usize, id: u64, chunks: u64) -> Option<(u64, u64)> {
    if !control.enter(w, id) {
        return None;
    }
    Some(claim_inside(control, w, chunks))
}

/// Worker `w`, inside a posting of `chunks` chunks, claims until nothing is left, then
/// leaves it. Returns its claims and when it finished (CLOCK_MONOTONIC ns).
fn claim_inside(control: &Control, w: usize, chunks: u64) -> (u64, u64) {
    let mut claims = 0;
    while control.claim(w, chunks, None).is_some() {
        claims += 1;
    }
    let end = monotonic_ns();
    control.leave(w);
    (claims, end)
}

/// The peer's side of [`ToPeer::Claim`]: enters posting `id` as worker 1, waits for the
/// parent's go (so that both start claiming together), and claims until nothing is left.
pub(super) fn peer_claims(
    area: &QueueArea,
    id: u64,
    chunks: u64,
) -> std::result::Result<FromPeer, String> {
    if !area.control.enter(PEER, id) {
        return Err(format!(
            "posting {id} was closed before the peer could claim from it"
        ));
    }
    let deadline = Instant::now() + PEER_TIMEOUT;
    while area.go().load(Ordering::Acquire) != id as u32 {
        if Instant::now() > deadline {
            area.control.leave(PEER);
            return Err(format!("no go for posting {id} within {PEER_TIMEOUT:?}"));
        }
        std::hint::spin_loop();
        std::thread::yield_now();
    }
    let (claims, end_ns) = claim_inside(&area.control, PEER, chunks);
    Ok(FromPeer::Claimed { claims, end_ns })
}

/// The peer's side of [`ToPeer::Futex`]: for each round `i` (1, 2, …), waits until the
/// ping word reads `i`, then sets the pong word to `i` and wakes the parent. Returns how
/// many of its waits slept in the kernel.
pub(super) fn peer_futex(area: &QueueArea, rounds: u64) -> std::result::Result<FromPeer, String> {
    let (ping, pong) = (area.ping(), area.pong());
    let mut slept = 0;
    for i in 1..=rounds {
        let i = i as u32;
        let deadline = Instant::now() + PEER_TIMEOUT;
        loop {
            let seen = ping.load(Ordering::Acquire);
            if seen == i {
                break;
            }
            if seen != i.wrapping_sub(1) {
                return Err(format!("ping {seen} in round {i}"));
            }
            if Instant::now() > deadline {
                return Err(format!("no ping for round {i} within {PEER_TIMEOUT:?}"));
            }
            if futex_wait(ping, seen, WAIT_SLICE) == Woke::Slept {
                slept += 1;
            }
        }
        pong.store(i, Ordering::Release);
        futex_wake(pong);
    }
    Ok(FromPeer::FutexDone { slept })
}

/// Measures the queue, unpinned: a warm-up, then [`REPEATS`] claim runs alone and as many
/// with the peer contending, interleaved, each draining a posting of `options.claims`
/// chunks (the medians are reported). Then the futex round trips: unpinned on the same
/// peer, and with `options.pin` both processes on one CPU and on two, each on a peer of its
/// own (a placement the machine refuses is skipped, with the reason in `notes`).
pub(super) fn measure_queue(
    options: &IpcBenchOptions,
    original: &CpuSet,
    cpus: &[usize],
    notes: &mut Vec<String>,
) -> Result<QueueBench> {
    let area = QueueArea::new()?;
    let mut peer = Peer::start_with_queue(None, &area)?;
    let chunks = options.claims as u64;
    let mut id = 0;
    let mut next_id = || {
        id += 1;
        id
    };
    // Untimed: fault in both processes' view of the control area.
    contended(&mut peer, &area, next_id(), chunks.div_ceil(10))?;
    let mut solo_runs = Vec::with_capacity(REPEATS);
    let mut contended_runs = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        solo_runs.push(solo(&area.control, next_id(), chunks)?);
        contended_runs.push(contended(&mut peer, &area, next_id(), chunks)?);
    }
    solo_runs.sort_by(|a, b| a.per_s.total_cmp(&b.per_s));
    contended_runs.sort_by(|a, b| a.per_s.total_cmp(&b.per_s));
    let (solo, together) = (solo_runs[REPEATS / 2], contended_runs[REPEATS / 2]);

    let (round_trips, warmup) = futex_counts(options.round_trips);
    notes.push(format!(
        "queue: unpinned; claims through the pool's own control block, {chunks} a run, 1 \
         process alone and 2 contending, median of 3; futex: ping-pong on two shared words \
         (FUTEX_WAIT, FUTEX_WAKE), {warmup} warm-up then {round_trips} timed round trips \
         per placement"
    ));
    let mut futex = vec![futex_round_trips(
        &mut peer,
        &area,
        UNPINNED,
        round_trips,
        warmup,
    )?];
    peer.finish()?;
    if options.pin {
        let placements = [
            (SAME_CPU, cpus[0], Some(cpus[0])),
            (CROSS_CPU, cpus[0], cpus.get(1).copied()),
        ];
        for (placement, parent_cpu, peer_cpu) in placements {
            let Some(peer_cpu) = peer_cpu else {
                notes.push(format!(
                    "futex {placement} skipped: this process may run on one CPU only"
                ));
                continue;
            };
            let _restore = RestoreAffinity(original);
            if let Err(e) = crate::engine::sys::pin_to(parent_cpu) {
                notes.push(format!(
                    "futex {placement} skipped: cannot pin this process to CPU {parent_cpu}: {e}"
                ));
                continue;
            }
            let mut peer = Peer::start_with_queue(Some(peer_cpu), &area)?;
            futex.push(futex_round_trips(
                &mut peer,
                &area,
                placement,
                round_trips,
                warmup,
            )?);
            peer.finish()?;
        }
    }
    Ok(QueueBench {
        claims: chunks,
        solo_claims_per_s: solo.per_s,
        contended_claims_per_s: together.per_s,
        peer_share: together.peer_share,
        futex,
    })
}

/// Timed futex round trips per placement, and the warm-up before them, for
/// `round_trips` message round trips: a quarter as many (a wake-up across CPUs can take
/// tens of microseconds), at least 1; the warm-up a tenth of that, 10 to 1000.
pub(super) fn futex_counts(round_trips: usize) -> (usize, usize) {
    let timed = (round_trips / 4).max(1);
    (timed, (timed / 10).clamp(10, 1000))
}

/// One timed claim run.
#[derive(Debug, Clone, Copy)]
struct ClaimRun {
    /// Claims per second.
    per_s: f64,
    /// The peer's share of the claims timed.
    peer_share: f64,
}

/// The parent alone drains posting `id` of `chunks` chunks.
fn solo(control: &Control, id: u64, chunks: u64) -> Result<ClaimRun> {
    control.open(&posting(id, chunks), 0);
    let began = Instant::now();
    let claimed = claim_all(control, PARENT, id, chunks);
    let took = began.elapsed();
    control.close();
    match claimed {
        Some((claims, _)) if claims == chunks => Ok(ClaimRun {
            per_s: chunks as f64 / took.as_secs_f64().max(1e-9),
            peer_share: 0.0,
        }),
        other => Err(Error::Ipc(format!(
            "ipc-bench: claiming alone from a posting of {chunks} chunks got {:?} of them",
            other.map(|(c, _)| c)
        ))),
    }
}

/// The parent and the peer drain posting `id` together. Once the peer is inside the
/// posting, the parent says go and starts the clock; the clock stops at whichever finished
/// last.
fn contended(peer: &mut Peer, area: &QueueArea, id: u64, chunks: u64) -> Result<ClaimRun> {
    let control = &area.control;
    control.open(&posting(id, chunks), 0);
    peer.send(
        ToPeer::Claim {
            posting: id,
            chunks,
        },
        "asking for claims",
    )?;
    let deadline = Instant::now() + PEER_TIMEOUT;
    while !control.inside(PEER, id) {
        let trouble = if Instant::now() > deadline {
            Err(Error::Ipc(format!(
                "the ipc-bench peer (pid {}) did not join the posting within {PEER_TIMEOUT:?}",
                peer.child.id()
            )))
        } else {
            still_there(peer, "waiting for the peer to claim")
        };
        if let Err(e) = trouble {
            control.close();
            return Err(e);
        }
        std::thread::yield_now();
    }
    let began = monotonic_ns();
    area.go().store(id as u32, Ordering::Release);
    let mine = claim_all(control, PARENT, id, chunks).map_or(0, |(c, _)| c);
    let my_end = monotonic_ns();
    let reply = peer.reply("waiting for the peer's claims");
    control.close();
    let (theirs, their_end) = match reply? {
        FromPeer::Claimed { claims, end_ns } => (claims, end_ns),
        other => return Err(peer.unexpected(other, "waiting for the peer's claims")),
    };
    if mine + theirs != chunks {
        return Err(Error::Ipc(format!(
            "ipc-bench: two processes claimed {mine} + {theirs} chunks from a posting of \
             {chunks}: every chunk must be claimed exactly once"
        )));
    }
    let took_ns = my_end.max(their_end).saturating_sub(began).max(1);
    Ok(ClaimRun {
        per_s: chunks as f64 / (took_ns as f64 / 1e9),
        peer_share: theirs as f64 / chunks.max(1) as f64,
    })
}

/// Whether the peer is still serving the request it was sent: an error if it answered
/// (it only answers at the end, or to say it failed) or its channel broke. Does not block.
fn still_there(peer: &mut Peer, what: &str) -> Result<()> {
    match peer.rx.try_recv() {
        Err(TryRecvError::Empty) => Ok(()),
        Ok(message) => Err(peer.unexpected(message, what)),
        Err(TryRecvError::IpcError(e)) => Err(peer.lost(what, &e)),
    }
}

/// Ping-pong on the two futex words: the parent sets ping to `i` and wakes the peer, the
/// peer sets pong to `i` and wakes the parent. Times the round trips after `warmup`, and
/// counts how many of both sides' waits slept in the kernel.
fn futex_round_trips(
    peer: &mut Peer,
    area: &QueueArea,
    placement: &str,
    round_trips: usize,
    warmup: usize,
) -> Result<FutexLatency> {
    let (ping, pong) = (area.ping(), area.pong());
    ping.store(0, Ordering::Release);
    pong.store(0, Ordering::Release);
    let rounds = (warmup + round_trips) as u64;
    peer.send(ToPeer::Futex { rounds }, "starting the futex ping-pong")?;
    let mut samples = Vec::with_capacity(round_trips);
    let mut slept = 0u64;
    for i in 1..=rounds {
        let i = i as u32;
        let began = Instant::now();
        ping.store(i, Ordering::Release);
        futex_wake(ping);
        let deadline = began + PEER_TIMEOUT;
        loop {
            let seen = pong.load(Ordering::Acquire);
            if seen == i {
                break;
            }
            match futex_wait(pong, seen, WAIT_SLICE) {
                Woke::Slept => slept += 1,
                Woke::Changed => {}
                Woke::TimedOut => {
                    still_there(peer, "playing futex ping-pong")?;
                    if Instant::now() > deadline {
                        return Err(Error::Ipc(format!(
                            "the ipc-bench peer (pid {}) did not answer ping {i} within \
                             {PEER_TIMEOUT:?}",
                            peer.child.id()
                        )));
                    }
                }
            }
        }
        let took = began.elapsed();
        if u64::from(i) > warmup as u64 {
            samples.push(took.as_secs_f64() * 1e6);
        }
    }
    let peer_slept = match peer.reply("waiting for the end of the futex ping-pong")? {
        FromPeer::FutexDone { slept } => slept,
        other => return Err(peer.unexpected(other, "waiting for the end of the ping-pong")),
    };
    samples.sort_by(f64::total_cmp);
    let latency = Latency {
        placement: placement.to_string(),
        samples: samples.len(),
        p50_us: percentile(&samples, 50.0),
        p90_us: percentile(&samples, 90.0),
        p99_us: percentile(&samples, 99.0),
        max_us: samples.last().copied().unwrap_or(f64::NAN),
        mean_us: samples.iter().sum::<f64>() / samples.len().max(1) as f64,
    };
    let waits = 2 * rounds;
    Ok(FutexLatency {
        round_trip: latency,
        slept_share: (slept + peer_slept) as f64 / waits.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_drain_a_posting_exactly_once() {
        let area = QueueArea::new().unwrap();
        let run = solo(&area.control, 1, 1000).unwrap();
        assert!(run.per_s.is_finite() && run.per_s > 0.0, "{run:?}");
        // The next posting starts from zero again.
        assert_eq!(claim_all(&area.control, PARENT, 1, 10), None, "closed");
        area.control.open(&posting(2, 10), 0);
        assert_eq!(
            claim_all(&area.control, PARENT, 2, 10).map(|c| c.0),
            Some(10)
        );
        area.control.close();
    }

    #[test]
    fn futex_round_trips_are_a_quarter_of_the_message_ones() {
        assert_eq!(futex_counts(20_000), (5_000, 500));
        assert_eq!(futex_counts(500), (125, 12));
        assert_eq!(futex_counts(1), (1, 10));
        assert_eq!(futex_counts(1_000_000), (250_000, 1000));
    }

    #[test]
    fn a_futex_wait_on_a_changed_word_returns_at_once() {
        let area = QueueArea::new().unwrap();
        area.ping().store(5, Ordering::Release);
        assert_eq!(
            futex_wait(area.ping(), 4, Duration::from_secs(10)),
            Woke::Changed
        );
        assert_eq!(
            futex_wait(area.ping(), 5, Duration::from_millis(1)),
            Woke::TimedOut
        );
    }
}
