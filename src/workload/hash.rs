//! `hash`: `out[i]` = the first 8 bytes of SHA-256 applied `rounds` times to `i`.
//!
//! Every element costs exactly `rounds` compressions of one SHA-256 block, whatever `i` is,
//! and writes only 8 bytes: the CPU-bound, *uniform* case, where even a static split keeps
//! every worker equally busy and speedup is close to the number of cores.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Workload;

/// The `rounds` used when none is given.
pub const DEFAULT_ROUNDS: u32 = 100;

/// Iterated SHA-256 of each index (`u64`).
///
/// Round 1 hashes the 8-byte little-endian encoding of `i`; round `k` hashes the 32-byte
/// digest of round `k - 1`. The output is the first 8 bytes of the last digest read as a
/// little-endian `u64`. With `rounds = 0` nothing is hashed and the output is `i` itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hash {
    /// How many times SHA-256 is applied per element.
    pub rounds: u32,
}

impl Default for Hash {
    fn default() -> Self {
        Hash {
            rounds: DEFAULT_ROUNDS,
        }
    }
}

impl Workload for Hash {
    const NAME: &'static str = "hash";
    type Output = u64;

    #[inline(never)]
    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = iterated_sha256(i, self.rounds);
        }
    }
}

fn iterated_sha256(i: u64, rounds: u32) -> u64 {
    if rounds == 0 {
        return i;
    }
    let mut digest = Sha256::digest(i.to_le_bytes());
    for _ in 1..rounds {
        digest = Sha256::digest(digest);
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compute(hash: Hash, range: Range<u64>) -> Vec<u64> {
        let mut out = vec![u64::MAX; (range.end - range.start) as usize];
        hash.kernel(range, &mut out);
        out
    }

    fn at(i: u64, rounds: u32) -> u64 {
        compute(Hash { rounds }, i..i + 1)[0]
    }

    #[test]
    fn zero_rounds_is_the_identity() {
        assert_eq!(compute(Hash { rounds: 0 }, 5..9), [5, 6, 7, 8]);
    }

    #[test]
    fn one_round_of_eight_zero_bytes_matches_the_published_digest() {
        // SHA-256(00 x 8) = af5570f5a1810b7a f78caf4bc70a660f 0df51e42baf91d4d e5b2328de0e83dfc
        // (Python: hashlib.sha256(bytes(8)).hexdigest()).
        let expected = u64::from_le_bytes([0xaf, 0x55, 0x70, 0xf5, 0xa1, 0x81, 0x0b, 0x7a]);
        assert_eq!(expected, 8_794_265_229_978_523_055);
        assert_eq!(at(0, 1), expected);
    }

    #[test]
    fn more_rounds_match_values_computed_with_python() {
        // SHA-256(SHA-256(00 x 8)) = 7ef0ca626bbb058d...
        assert_eq!(at(0, 2), 10_161_734_204_124_754_046);
        assert_eq!(
            at(0, 2),
            u64::from_le_bytes([0x7e, 0xf0, 0xca, 0x62, 0x6b, 0xbb, 0x05, 0x8d])
        );
        // SHA-256((12345).to_bytes(8, "little")), first 8 bytes as little-endian.
        assert_eq!(at(12_345, 1), 293_737_985_876_514_017);
    }

    #[test]
    fn rounds_chain_whole_digests() {
        // Round 3 hashes the full 32-byte digest of round 2, computed here step by step.
        let d1 = Sha256::digest(77u64.to_le_bytes());
        let d2 = Sha256::digest(d1);
        let d3 = Sha256::digest(d2);
        let expected = u64::from_le_bytes(d3[..8].try_into().unwrap());
        assert_eq!(at(77, 3), expected);
    }

    #[test]
    fn sub_ranges_agree_with_one_call() {
        let hash = Hash { rounds: 3 };
        let whole = compute(hash, 0..2_000);
        let mut pieces = Vec::new();
        for w in [0, 1, 2, 500, 1_024, 1_999, 2_000].windows(2) {
            pieces.extend(compute(hash, w[0]..w[1]));
        }
        assert_eq!(whole, pieces);
    }
}
