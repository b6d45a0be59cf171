//! The queue's progress watchdog: a job with chunks left never waits forever.
//!
//! `chunk_timeout` times a chunk that runs; nothing else moves a queue where nobody runs
//! anything: every worker stopped by a signal (SIGSTOP between two jobs of a library pool),
//! or chunks left that nobody holds (a claim counter written over, a claim lost). The
//! dispatch loop shows the watchdog a fingerprint of the queue on every turn; when it has
//! not changed for the stall limit (the chunk timeout, or without one a multiple of the
//! measured chunk time, plus the handshake timeout while a worker starts), the loop kills
//! the workers a signal stopped, queues the chunks nobody holds again, and fails the job
//! when even that moved nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The shortest stall limit without a chunk timeout.
const FLOOR: Duration = Duration::from_secs(2);
/// Without a chunk timeout, the stall limit is this many times the slowest worker's mean
/// chunk time (when that is above the floor).
const CHUNK_TIMES: u32 = 10;
/// A worker is killed for being stopped only when two looks at least this far apart both
/// find it stopped: a whole job continued after Ctrl-Z is not killed on its way back.
const STOP_CONFIRM: Duration = Duration::from_millis(100);

/// How long a queue with chunks left may stand still before the watchdog acts.
pub(super) fn stall_limit(
    chunk_timeout: Option<Duration>,
    slowest_chunk: Duration,
    starting: bool,
    handshake: Duration,
) -> Duration {
    let base =
        chunk_timeout.unwrap_or_else(|| slowest_chunk.saturating_mul(CHUNK_TIMES).max(FLOOR));
    if starting {
        base.saturating_add(handshake)
    } else {
        base
    }
}

/// Whether process `pid` is stopped now (state `T`, or `t` under a tracer), by
/// `/proc/PID/stat`.
pub(super) fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| state_in(&stat))
        .is_some_and(|state| matches!(state, 'T' | 't'))
}

/// The state letter of a `/proc/PID/stat` line (after the command name, which may hold
/// spaces and parentheses).
fn state_in(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// What the watchdog remembers between turns of the loop.
#[derive(Debug)]
pub(super) struct Watch {
    fingerprint: Vec<u64>,
    since: Instant,
    /// Workers (by pid) found stopped, and when first.
    stopped: HashMap<u32, Instant>,
    /// The chunks nobody held were queued again in this stall.
    pub(super) reclaimed: bool,
}

impl Watch {
    pub(super) fn new() -> Self {
        Watch {
            fingerprint: Vec::new(),
            since: Instant::now(),
            stopped: HashMap::new(),
            reclaimed: false,
        }
    }

    /// Takes this turn's fingerprint; returns how long the queue has stood still (zero
    /// when it moved).
    pub(super) fn still_for(&mut self, fingerprint: Vec<u64>, now: Instant) -> Duration {
        if fingerprint != self.fingerprint {
            self.fingerprint = fingerprint;
            self.restart(now);
        }
        now.saturating_duration_since(self.since)
    }

    /// Starts a new stall period (something moved, or the watchdog acted).
    pub(super) fn restart(&mut self, now: Instant) {
        self.since = now;
        self.reclaimed = false;
        self.stopped.clear();
    }

    /// Whether worker `pid`, found `stopped` now, has been stopped long enough to kill.
    pub(super) fn confirm_stopped(&mut self, pid: u32, stopped: bool, now: Instant) -> bool {
        if !stopped {
            self.stopped.remove(&pid);
            return false;
        }
        let first = *self.stopped.entry(pid).or_insert(now);
        now.saturating_duration_since(first) >= STOP_CONFIRM
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_limit_is_the_chunk_timeout_or_a_multiple_of_the_chunk_time() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(stall_limit(Some(s(1)), s(5), false, s(10)), s(1));
        assert_eq!(stall_limit(Some(s(1)), s(5), true, s(10)), s(11));
        assert_eq!(stall_limit(None, ms(1), false, s(10)), FLOOR);
        assert_eq!(stall_limit(None, ms(500), false, s(10)), s(5));
        assert_eq!(stall_limit(None, ms(500), true, s(3)), s(8));
        assert_eq!(stall_limit(None, Duration::MAX, true, s(3)), Duration::MAX);
    }

    #[test]
    fn the_state_letter_follows_the_last_parenthesis() {
        assert_eq!(state_in("42 (a) b) T 1 42"), Some('T'));
        assert_eq!(state_in("42 (procpool) S 1"), Some('S'));
        assert_eq!(state_in("garbage"), None);
        assert!(!is_stopped(std::process::id()), "this test runs");
    }

    #[test]
    fn a_stall_is_timed_from_the_last_change_and_a_stop_is_confirmed_twice() {
        let t0 = Instant::now();
        let mut watch = Watch::new();
        assert_eq!(watch.still_for(vec![1, 2], t0), Duration::ZERO);
        let later = t0 + Duration::from_secs(3);
        assert_eq!(watch.still_for(vec![1, 2], later), Duration::from_secs(3));
        assert!(!watch.confirm_stopped(7, true, later));
        assert!(!watch.confirm_stopped(7, true, later + Duration::from_millis(50)));
        assert!(watch.confirm_stopped(7, true, later + STOP_CONFIRM));
        assert!(!watch.confirm_stopped(7, false, later + STOP_CONFIRM));
        assert!(
            !watch.confirm_stopped(7, true, later + 2 * STOP_CONFIRM),
            "seen again"
        );
        watch.reclaimed = true;
        assert_eq!(watch.still_for(vec![1, 3], later), Duration::ZERO);
        assert!(!watch.reclaimed, "progress ends the stall");
    }
}
