//! `sleep`: `out[i] = i`, after sleeping `ms` milliseconds for every element.
//!
//! The processes wait instead of compute (the stand-in for the Python tutorials'
//! `slow_function` doing I/O), so the speedup keeps growing past the number of cores: the
//! *I/O-bound* case, where more workers than cores still help.

use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Workload;

/// The longest sleep per element: one hour, in milliseconds.
pub const MAX_MS: f64 = 3.6e6;

/// `out[i] = i` (`u64`), after a sleep of `ms` milliseconds per element.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sleep {
    /// Milliseconds slept per element; `0`, negative or NaN values do not sleep, values
    /// above [`MAX_MS`] (infinity included) sleep [`MAX_MS`].
    pub ms: f64,
}

impl Sleep {
    /// The sleep per element: `ms` within `0..=MAX_MS`.
    fn nap(&self) -> Duration {
        if self.ms.is_nan() || self.ms <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.ms.min(MAX_MS) / 1000.0)
    }
}

impl Workload for Sleep {
    const NAME: &'static str = "sleep";
    type Output = u64;
    const WAITS: bool = true;

    #[inline(never)]
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        let nap = self.nap();
        for (slot, i) in out.iter_mut().zip(range) {
            if !nap.is_zero() {
                std::thread::sleep(nap);
            }
            *slot = i;
        }
    }

    /// n × ms: sleeping one element after another takes exactly that long, so the baseline
    /// need not wait it out.
    fn sequential_time(&self, n: u64) -> Option<Duration> {
        let nap = self.nap();
        Some(nap.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX)))
    }

    fn expected(&self, range: Range<u64>, out: &mut [u64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = i;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn compute(sleep: Sleep, range: Range<u64>) -> Vec<u64> {
        let mut out = vec![u64::MAX; (range.end - range.start) as usize];
        sleep.kernel(range, &mut out);
        out
    }

    #[test]
    fn values_are_the_indices() {
        assert_eq!(compute(Sleep { ms: 0.0 }, 10..14), [10, 11, 12, 13]);
        assert_eq!(compute(Sleep { ms: -5.0 }, 0..2), [0, 1]);
        assert_eq!(compute(Sleep { ms: f64::NAN }, 0..2), [0, 1]);
    }

    #[test]
    fn more_than_an_hour_sleeps_an_hour_not_nothing() {
        let hour = Duration::from_secs(3600);
        for ms in [MAX_MS, 1e300, f64::INFINITY] {
            assert_eq!(Sleep { ms }.sequential_time(1), Some(hour), "{ms}");
        }
        assert_eq!(Sleep { ms: -1.0 }.sequential_time(1), Some(Duration::ZERO));
    }

    #[test]
    fn each_element_sleeps_at_least_ms() {
        // A lower bound on sleeping, not a speed assertion.
        let start = Instant::now();
        assert_eq!(compute(Sleep { ms: 1.0 }, 7..10), [7, 8, 9]);
        assert!(start.elapsed() >= Duration::from_millis(3));
    }

    #[test]
    fn the_sequential_time_is_known_without_sleeping() {
        let sleep = Sleep { ms: 100.0 };
        assert_eq!(
            sleep.sequential_time(10_000),
            Some(Duration::from_secs(1000))
        );
        let mut out = [0u64; 3];
        let start = Instant::now();
        sleep.expected(5..8, &mut out);
        assert_eq!(out, [5, 6, 7]);
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "expected() must not sleep"
        );
    }

    #[test]
    fn sub_ranges_agree_with_one_call() {
        let sleep = Sleep { ms: 0.0 };
        let whole = compute(sleep, 0..100);
        let mut pieces = compute(sleep, 0..1);
        pieces.extend(compute(sleep, 1..50));
        pieces.extend(compute(sleep, 50..100));
        assert_eq!(whole, pieces);
    }
}
