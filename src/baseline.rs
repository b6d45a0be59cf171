//! The single-process run and the element-wise verification.
//!
//! The baseline is half of every report, not a test helper: it calls the very same kernel
//! function the workers call, over the whole range in one go, so the comparison measures
//! what processes add and nothing else.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::workload::{Element, Workload};

/// Runs `workload` on `0..n` in this process. Returns the output and the time it took
/// (allocation of zeroed pages included, as the pool's first-touch page faults are).
///
/// A workload whose [`Workload::sequential_time`] is known (`sleep`) is not waited out: its
/// expected output is computed without the waiting and the known time is returned.
pub fn run_single<W: Workload>(workload: &W, n: u64) -> (Vec<W::Output>, Duration) {
    match workload.sequential_time(n) {
        Some(known) => {
            let mut out = zeroed(n);
            workload.expected(0..n, &mut out);
            (out, known)
        }
        None => run_kernel(workload, n),
    }
}

/// Runs the kernel on `0..n` in this process, in one call, and times it (`--mode single`).
pub fn run_kernel<W: Workload>(workload: &W, n: u64) -> (Vec<W::Output>, Duration) {
    let began = Instant::now();
    let mut out = zeroed(n);
    workload.kernel(0..n, &mut out);
    (out, began.elapsed())
}

fn zeroed<T: bytemuck::Zeroable + Clone>(n: u64) -> Vec<T> {
    let len = usize::try_from(n).expect("n was checked against memory before");
    bytemuck::zeroed_vec(len)
}

/// The wrapping (mod 2^64) sum of the elements, each widened to `u64`.
pub fn checksum<T: Element>(xs: &[T]) -> u64 {
    xs.iter().fold(0u64, |acc, &x| acc.wrapping_add(x.widen()))
}

/// The first place where two outputs differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// Index of the first differing element.
    pub index: u64,
    /// The pool's value there, widened to `u64`.
    pub pool: u64,
    /// The single-process value there, widened to `u64`.
    pub baseline: u64,
}

/// Compares two outputs element by element; `None` when they are identical.
pub fn first_mismatch<T: Element>(pool: &[T], baseline: &[T]) -> Option<Mismatch> {
    // Whole-slice comparison first: it is a memcmp, far faster than an element loop.
    if pool == baseline {
        return None;
    }
    if let Some(index) = pool.iter().zip(baseline).position(|(a, b)| a != b) {
        return Some(Mismatch {
            index: index as u64,
            pool: pool[index].widen(),
            baseline: baseline[index].widen(),
        });
    }
    // Same prefix, different lengths.
    let index = pool.len().min(baseline.len());
    Some(Mismatch {
        index: index as u64,
        pool: pool.get(index).map_or(0, |x| x.widen()),
        baseline: baseline.get(index).map_or(0, |x| x.widen()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Squares;

    #[test]
    fn baseline_checksum_matches_the_closed_form() {
        let n = 100_000u64;
        let (out, _) = run_single(&Squares, n);
        let exact = (n as u128 - 1) * n as u128 * (2 * n as u128 - 1) / 6;
        assert_eq!(checksum(&out), exact as u64);
    }

    #[test]
    fn mismatch_reports_the_first_difference() {
        assert_eq!(first_mismatch(&[1u64, 2, 3], &[1, 2, 3]), None);
        assert_eq!(
            first_mismatch(&[1u64, 9, 3, 8], &[1, 2, 3, 4]),
            Some(Mismatch {
                index: 1,
                pool: 9,
                baseline: 2
            })
        );
        assert_eq!(first_mismatch(&[1u8, 2], &[1]).map(|m| m.index), Some(1));
    }
}
