//! What the ranks say to each other, and how they wait for it without spinning: pure
//! encoding and the back-off, unit-tested without MPI.

use std::time::Duration;

/// Rank 0 → worker: the job (postcard [`Header`]).
pub(crate) const TAG_HEADER: i32 = 1;
/// Rank 0 → worker: one chunk, `[id, start, end, first]` as `u64`s (`first` is 1 for a
/// round's first chunk to that worker).
pub(crate) const TAG_CHUNK: i32 = 2;
/// Rank 0 → worker: no more chunks; free the window and finish.
pub(crate) const TAG_STOP: i32 = 3;
/// Worker → rank 0: its pid, node, start time and host, once (`[pid, node, started]` as
/// `u64`s, then the host's bytes; `started` is the start time in clock ticks since boot,
/// which tells rank 0 whether that pid is still the same process).
pub(crate) const TAG_HELLO: i32 = 4;
/// Worker → rank 0: a chunk is done ([`Done`]), with its accumulator when the job reduces
/// and its results when the worker is not on rank 0's node and sends them back
/// ([`ResultRoute::Send`](super::ResultRoute::Send)).
pub(crate) const TAG_DONE: i32 = 5;
/// Worker → rank 0: the kernel panicked on a chunk (postcard [`Failed`]).
pub(crate) const TAG_FAILED: i32 = 6;

/// The job, as rank 0 sends it to every worker before the window is allocated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Header {
    /// Elements in the job.
    pub(crate) n: u64,
    /// Bytes of one element.
    pub(crate) elem_size: u64,
    /// The workload's name (checked against the worker's own type).
    pub(crate) name: String,
    /// The workload, postcard-encoded: every worker runs rank 0's value.
    pub(crate) params: Vec<u8>,
    /// Why the job cannot run (a /dev/shm too small, bad options): the workers then finish
    /// without allocating anything, and rank 0 reports it.
    pub(crate) refused: Option<String>,
    /// Reduce each chunk and send its accumulator in `Done`.
    pub(crate) reduce: bool,
    /// Faults to inject (`--inject`).
    pub(crate) faults: Vec<crate::engine::fault::Fault>,
    /// How workers on other nodes deliver results: `MPI_Put` into rank 0's window through
    /// a window on the world communicator (`true`), or in their `Done` messages.
    pub(crate) put: bool,
}

/// A kernel panic, as the worker that caught it reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Failed {
    /// The chunk's id.
    pub(crate) id: u64,
    /// The panic's message.
    pub(crate) message: String,
    /// Where it panicked (`file:line:column`), when known.
    pub(crate) location: Option<String>,
}

/// A finished chunk, as a worker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Done {
    /// The chunk's id.
    pub(crate) id: u64,
    /// Kernel time, nanoseconds.
    pub(crate) compute_ns: u64,
    /// Times the worker slept waiting for work so far.
    pub(crate) sleeps: u64,
    /// Nanoseconds the worker spent between its previous chunk's kernel (or the job's
    /// start) and this one's: waiting for the chunk's message and receiving it.
    pub(crate) waited_ns: u64,
}

/// Bytes before a `Done` message's accumulator and results.
pub(crate) const DONE_HEAD: usize = 40;

impl Done {
    /// The message: five words (the four fields and the accumulator's length), then `acc`,
    /// then `results` (each empty when there is none).
    pub(crate) fn encode(&self, acc: &[u8], results: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(DONE_HEAD + acc.len() + results.len());
        let words = [
            self.id,
            self.compute_ns,
            self.sleeps,
            self.waited_ns,
            acc.len() as u64,
        ];
        for word in words {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(acc);
        out.extend_from_slice(results);
        out
    }

    /// Splits a message into the report, the accumulator and the results; `None` when it
    /// is too short for what it says it holds.
    pub(crate) fn decode(message: &[u8]) -> Option<(Done, &[u8], &[u8])> {
        if message.len() < DONE_HEAD {
            return None;
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&message[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let rest = &message[DONE_HEAD..];
        let acc_len = usize::try_from(word(4)).ok().filter(|&l| l <= rest.len())?;
        let (acc, results) = rest.split_at(acc_len);
        Some((
            Done {
                id: word(0),
                compute_ns: word(1),
                sleeps: word(2),
                waited_ns: word(3),
            },
            acc,
            results,
        ))
    }
}

/// How a rank waits for a message without burning a core: a few immediate probes, then
/// sleeps that double from [`Backoff::FIRST`] to [`Backoff::MAX`]. A message resets it.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    misses: u32,
    sleep: Option<Duration>,
    /// Sleeps taken in all.
    pub(crate) sleeps: u64,
}

impl Backoff {
    /// Probes that find nothing before the first sleep.
    pub(crate) const SPINS: u32 = 32;
    /// The first sleep.
    pub(crate) const FIRST: Duration = Duration::from_micros(20);
    /// The longest sleep: the most a message waits on an idle rank.
    pub(crate) const MAX: Duration = Duration::from_micros(500);

    /// After a probe that found nothing: how long to sleep before the next (none yet).
    pub(crate) fn miss(&mut self) -> Option<Duration> {
        self.misses += 1;
        if self.misses <= Self::SPINS {
            return None;
        }
        let next = match self.sleep {
            None => Self::FIRST,
            Some(d) => (d * 2).min(Self::MAX),
        };
        self.sleep = Some(next);
        self.sleeps += 1;
        Some(next)
    }

    /// After a probe that found a message.
    pub(crate) fn hit(&mut self) {
        self.misses = 0;
        self.sleep = None;
    }

    /// Sleeps as [`Backoff::miss`] says.
    pub(crate) fn wait(&mut self) {
        match self.miss() {
            Some(d) => std::thread::sleep(d),
            None => std::hint::spin_loop(),
        }
    }
}

/// How to wait, in words, for the report.
pub(crate) fn wait_text() -> String {
    format!(
        "MPI_Iprobe, then sleeps from {} µs doubling to {} µs after {} empty probes",
        Backoff::FIRST.as_micros(),
        Backoff::MAX.as_micros(),
        Backoff::SPINS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_round_trips_with_and_without_an_accumulator_and_results() {
        let done = Done {
            id: 7,
            compute_ns: 12_345,
            sleeps: 3,
            waited_ns: 99,
        };
        let bytes = done.encode(&[9, 8], &[1, 2, 3]);
        assert_eq!(
            Done::decode(&bytes),
            Some((done, &[9u8, 8][..], &[1u8, 2, 3][..]))
        );
        let bytes = done.encode(&[], &[]);
        assert_eq!(Done::decode(&bytes), Some((done, &[][..], &[][..])));
        assert_eq!(Done::decode(&bytes[..10]), None);
        // An accumulator longer than the message is refused, not read past the end.
        let mut bad = done.encode(&[1], &[]);
        bad[32..40].copy_from_slice(&99u64.to_le_bytes());
        assert_eq!(Done::decode(&bad), None);
    }

    #[test]
    fn backoff_spins_then_sleeps_doubling_to_a_cap_and_resets() {
        let mut b = Backoff::default();
        for _ in 0..Backoff::SPINS {
            assert_eq!(b.miss(), None);
        }
        assert_eq!(b.miss(), Some(Backoff::FIRST));
        assert_eq!(b.miss(), Some(Backoff::FIRST * 2));
        for _ in 0..20 {
            b.miss();
        }
        assert_eq!(b.miss(), Some(Backoff::MAX));
        b.hit();
        assert_eq!(b.miss(), None);
        assert_eq!(b.sleeps, 23);
    }
}
