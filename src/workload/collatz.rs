//! `collatz`: `out[i]` = the number of Collatz steps (`n -> n / 2` if even, `3n + 1` if odd)
//! that take `i` to 1.
//!
//! Step counts jump about between neighbouring `i` (27 takes 111 steps, 28 takes 18) with no
//! trend along the range, so the cost of a chunk is hard to predict from its bounds: the
//! CPU-bound, *irregular* case, where smaller chunks even out the luck of the draw.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::Workload;

/// `out[i]` = Collatz steps from `i` to 1 (`u32`); `0` for `i = 0` and `i = 1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collatz;

impl Workload for Collatz {
    const NAME: &'static str = "collatz";
    type Output = u32;

    #[inline(never)]
    fn kernel(&self, range: Range<u64>, out: &mut [u32]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = steps(i);
        }
    }
}

/// Steps from `start` to 1, in `u64` while `3n + 1` fits and in `u128` after that.
///
/// Trajectories of starting values below 2^64 that were checked peak far below 2^128 (that of
/// `u64::MAX` peaks near 2^103), so the `u128` part cannot overflow in practice.
fn steps(start: u64) -> u32 {
    let mut n = start;
    let mut steps = 0u32;
    while n > 1 {
        if n.is_multiple_of(2) {
            n /= 2;
        } else {
            match n.checked_mul(3).and_then(|m| m.checked_add(1)) {
                Some(m) => n = m,
                None => return steps + steps_wide(3 * u128::from(n) + 1) + 1,
            }
        }
        steps += 1;
    }
    steps
}

/// Steps from `n` to 1 with 128-bit arithmetic (the rare trajectories that leave `u64`).
fn steps_wide(mut n: u128) -> u32 {
    let mut steps = 0u32;
    while n > 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compute(range: Range<u64>) -> Vec<u32> {
        let mut out = vec![u32::MAX; (range.end - range.start) as usize];
        Collatz.kernel(range, &mut out);
        out
    }

    fn at(i: u64) -> u32 {
        compute(i..i + 1)[0]
    }

    #[test]
    fn small_values_match_the_known_sequence() {
        // OEIS A006577 (with 0 for i = 0).
        assert_eq!(compute(0..10), [0, 0, 1, 7, 2, 5, 8, 16, 3, 19]);
    }

    #[test]
    fn famous_step_counts() {
        assert_eq!(at(6), 8);
        assert_eq!(at(7), 16);
        assert_eq!(at(27), 111);
        assert_eq!(at(97), 118);
        // The longest trajectory below one million.
        assert_eq!(at(837_799), 524);
    }

    #[test]
    fn trajectories_that_leave_u64_are_followed_in_u128() {
        // 3n + 1 overflows u64 on the first step for both; step counts computed with
        // Python's arbitrary-precision integers. (An index range never reaches u64::MAX.)
        assert_eq!(at(u64::MAX - 2), 863);
        assert_eq!(at(u64::MAX - 4), 558);
    }

    #[test]
    fn total_steps_below_ten_thousand() {
        // Computed independently with Python.
        let total: u64 = compute(0..10_000).iter().map(|&s| u64::from(s)).sum();
        assert_eq!(total, 849_637);
    }

    #[test]
    fn sub_ranges_agree_with_one_call() {
        let whole = compute(0..10_000);
        let mut pieces = Vec::new();
        for w in [0, 1, 2, 27, 28, 4_096, 9_999, 10_000].windows(2) {
            pieces.extend(compute(w[0]..w[1]));
        }
        assert_eq!(whole, pieces);
    }
}
