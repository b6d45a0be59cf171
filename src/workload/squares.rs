//! `squares`: `out[i] = i * i` as `u64`, wrapping.
//!
//! Almost no arithmetic per byte written, so its speed is set by page faults and memory
//! bandwidth, not by the multiply: the memory-bound case.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::{Reduce, Workload};

/// `out[i] = i * i` (u64, wrapping).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Squares;

impl Workload for Squares {
    const NAME: &'static str = "squares";
    type Output = u64;

    #[inline(never)]
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = i.wrapping_mul(i);
        }
    }
}

/// The sum of the squares (wrapping, mod 2^64): `(n-1) n (2n-1) / 6` for `0..n`.
impl Reduce for Squares {
    type Acc = u64;
    fn identity(&self) -> u64 {
        0
    }
    fn reduce_chunk(&self, _range: Range<u64>, out: &[u64]) -> u64 {
        out.iter().fold(0, |sum, &x| sum.wrapping_add(x))
    }
    fn combine(&self, left: u64, right: u64) -> u64 {
        left.wrapping_add(right)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squares_known_values_and_wrapping() {
        let mut out = [0u64; 4];
        Squares.kernel(0..4, &mut out);
        assert_eq!(out, [0, 1, 4, 9]);
        let big = 1u64 << 32;
        let mut out = [7u64; 2];
        Squares.kernel(big..big + 2, &mut out);
        assert_eq!(out, [0, (big + 1).wrapping_mul(big + 1)]);
    }

    #[test]
    fn checksum_for_ten_million_matches_the_closed_form() {
        // sum_{i<n} i^2 = (n-1) n (2n-1) / 6, reduced mod 2^64.
        let n: u128 = 10_000_000;
        let exact = (n - 1) * n * (2 * n - 1) / 6;
        assert_eq!(exact as u64, 1_291_890_006_563_070_912);
    }
}
