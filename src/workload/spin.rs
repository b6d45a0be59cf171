//! `spin`: `out[i]` = the state of a pseudo-random chain seeded from `i` after `iters` steps.
//!
//! Pure register arithmetic with no memory traffic, whose cost per element is set directly
//! in microseconds ([`Spin::calibrate`]). Shrinking the per-element cost (or the chunk size)
//! until messages and scheduling dominate shows *task granularity* against IPC cost: how small
//! a chunk can be before the pool spends more time talking than computing.

use std::hint::black_box;
use std::ops::Range;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Workload;

/// `iters` steps of a SplitMix64 chain seeded from `i` (`u64`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spin {
    /// Steps of the chain per element; `0` makes the output `i` itself.
    pub iters: u64,
}

impl Workload for Spin {
    const NAME: &'static str = "spin";
    type Output = u64;

    #[inline(never)]
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = chain(i, self.iters);
        }
    }
}

/// Each step feeds the previous state through SplitMix64's increment and finalizer; the
/// finalizer is non-linear, and `black_box` keeps every step a real dependent computation.
fn chain(seed: u64, iters: u64) -> u64 {
    let mut x = seed;
    for _ in 0..iters {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x = black_box(z ^ (z >> 31));
    }
    x
}

/// The most microseconds per element [`Spin::calibrate`] aims for: one hour.
pub const MAX_US: f64 = 3.6e9;

/// Shortest timed batch: long enough that timer resolution and scheduling noise are small.
const MIN_BATCH: Duration = Duration::from_millis(20);

impl Spin {
    /// A `Spin` whose elements each take about `us` microseconds on this machine.
    ///
    /// Times the kernel itself on a doubling number of steps until one batch takes at least
    /// 20 ms, then scales (best of two batches). Call it once in the parent and send the
    /// result to workers, so every process does the same work. `us <= 0` (or NaN) gives
    /// `iters = 0`; any positive `us` gives at least one step; more than [`MAX_US`] (an
    /// hour, infinity included) is taken as [`MAX_US`].
    pub fn calibrate(us: f64) -> Spin {
        if us.is_nan() || us <= 0.0 {
            return Spin { iters: 0 };
        }
        let us = us.min(MAX_US);
        let time = |iters: u64| {
            let spin = Spin { iters };
            let mut out = [0u64; 1];
            let start = Instant::now();
            spin.kernel(black_box(0..1), &mut out);
            black_box(out);
            start.elapsed()
        };
        let mut iters: u64 = 1 << 10;
        let mut elapsed = time(iters);
        while elapsed < MIN_BATCH && iters < 1 << 40 {
            iters *= 2;
            elapsed = time(iters);
        }
        elapsed = elapsed.min(time(iters));
        let per_us = iters as f64 / (elapsed.as_secs_f64() * 1e6).max(f64::MIN_POSITIVE);
        // `as` saturates: an absurd `us` gives `u64::MAX` steps rather than wrapping.
        Spin {
            iters: ((us * per_us).round() as u64).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compute(spin: Spin, range: Range<u64>) -> Vec<u64> {
        let mut out = vec![0u64; (range.end - range.start) as usize];
        spin.kernel(range, &mut out);
        out
    }

    #[test]
    fn zero_iterations_is_the_identity() {
        assert_eq!(compute(Spin { iters: 0 }, 3..6), [3, 4, 5]);
    }

    #[test]
    fn one_step_is_splitmix64() {
        // The first output of the reference SplitMix64 generator seeded with 0.
        assert_eq!(compute(Spin { iters: 1 }, 0..1), [0xe220_a839_7b1d_cdaf]);
    }

    #[test]
    fn values_are_deterministic_and_depend_on_i() {
        let spin = Spin { iters: 1_000 };
        let a = compute(spin, 0..256);
        assert_eq!(a, compute(spin, 0..256));
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), a.len());
        assert_ne!(a, compute(Spin { iters: 1_001 }, 0..256));
    }

    #[test]
    fn sub_ranges_agree_with_one_call() {
        let spin = Spin { iters: 100 };
        let whole = compute(spin, 0..1_000);
        let mut pieces = Vec::new();
        for w in [0, 1, 2, 333, 334, 999, 1_000].windows(2) {
            pieces.extend(compute(spin, w[0]..w[1]));
        }
        assert_eq!(whole, pieces);
    }

    #[test]
    fn calibration_of_nothing_is_zero_and_of_something_is_positive() {
        assert_eq!(Spin::calibrate(0.0).iters, 0);
        assert_eq!(Spin::calibrate(-1.0).iters, 0);
        assert_eq!(Spin::calibrate(f64::NAN).iters, 0);
        assert!(Spin::calibrate(50.0).iters > 0);
    }

    #[test]
    fn calibration_of_more_than_an_hour_is_an_hour() {
        let hour = Spin::calibrate(MAX_US).iters;
        assert!(hour > 1 << 20, "an hour is many steps: {hour}");
        for us in [1e300, f64::INFINITY] {
            let iters = Spin::calibrate(us).iters;
            // Calibrations vary a little from call to call; infinity is not a hundred hours.
            assert!(iters < hour.saturating_mul(100), "{us}: {iters} vs {hour}");
        }
    }
}
