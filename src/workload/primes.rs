//! `primes`: `out[i] = 1` if `i` is prime, else `0`, by plain trial division.
//!
//! Each `i` is tested against every odd divisor up to `sqrt(i)` (no sieve), so a prime near
//! `i` costs about `sqrt(i) / 2` divisions and the work per element grows along the range. A
//! static split into equal index ranges therefore hands the last worker far more work than
//! the first: the CPU-bound, *unbalanced* case that dynamic scheduling fixes.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::{Reduce, Workload};

/// `out[i] = 1` if `i` is prime, else `0` (`u8`), by trial division by odd numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Primes;

impl Workload for Primes {
    const NAME: &'static str = "primes";
    type Output = u8;

    #[inline(never)]
    fn kernel(&self, range: Range<u64>, out: &mut [u8]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = u8::from(is_prime(i));
        }
    }
}

/// How many primes there are below `n`.
impl Reduce for Primes {
    type Acc = u64;
    fn identity(&self) -> u64 {
        0
    }
    fn reduce_chunk(&self, _range: Range<u64>, out: &[u8]) -> u64 {
        out.iter().map(|&p| u64::from(p)).sum()
    }
    fn combine(&self, left: u64, right: u64) -> u64 {
        left + right
    }
}

/// Trial division by 2 and then by every odd `d` with `d * d <= n`.
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3;
    // `d <= n / d` is `d * d <= n` without overflow near `u64::MAX`; the quotient and the
    // remainder below come from the same division instruction.
    while d <= n / d {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compute(range: Range<u64>) -> Vec<u8> {
        let mut out = vec![7u8; (range.end - range.start) as usize];
        Primes.kernel(range, &mut out);
        out
    }

    fn count(n: u64) -> u64 {
        compute(0..n).iter().map(|&b| u64::from(b)).sum()
    }

    #[test]
    fn primes_below_thirty_are_flagged_and_nothing_else() {
        let expected = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29];
        let out = compute(0..30);
        for (i, &flag) in out.iter().enumerate() {
            assert_eq!(flag, u8::from(expected.contains(&i)), "i = {i}");
        }
    }

    #[test]
    fn prime_counts_match_pi_of_powers_of_ten() {
        assert_eq!(count(100), 25);
        assert_eq!(count(100_000), 9_592);
        assert_eq!(count(1_000_000), 78_498);
    }

    #[test]
    #[ignore = "about 8 s in a debug build; run with `cargo test --release -- --ignored`"]
    fn prime_count_below_ten_million_is_664579() {
        assert_eq!(count(10_000_000), 664_579);
    }

    #[test]
    fn large_primes_and_squares_of_primes() {
        // 2^61 - 1 is a Mersenne prime (too slow to trial-divide in a test); use smaller ones.
        assert_eq!(compute(1_000_003..1_000_004), [1]); // prime
        assert_eq!(compute(999_983..999_984), [1]); // largest prime below 10^6
        assert_eq!(compute(994_009..994_010), [0]); // 997^2
        assert_eq!(compute(4_294_967_291..4_294_967_292), [1]); // largest prime below 2^32
    }

    #[test]
    fn sub_ranges_agree_with_one_call() {
        let whole = compute(0..10_000);
        let mut pieces = Vec::new();
        for w in [0, 1, 2, 97, 1_000, 1_001, 5_555, 10_000].windows(2) {
            pieces.extend(compute(w[0]..w[1]));
        }
        assert_eq!(whole, pieces);
    }
}
