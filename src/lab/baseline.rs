//! The single-process run and the element-wise verification.
//!
//! The baseline is half of every report, not a test helper: it calls the very same kernel
//! function the workers call, over the whole range in one go, so the comparison measures
//! what processes add and nothing else.

use std::ops::Range;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::interrupt::Interrupt;
use crate::error::{Error, Phase, Result};
use crate::workload::{Element, Workload};

/// Runs `workload` on `0..n` in this process. Returns the output and the time it took
/// (allocation of zeroed pages included, as the pool's first-touch page faults are).
///
/// A workload whose [`Workload::sequential_time`] is known (`sleep`) is not waited out: its
/// expected output is computed without the waiting and the known time is returned.
///
/// The kernel runs over consecutive pieces of the range (see [`in_pieces`]), so SIGINT or
/// SIGTERM stops it within a fraction of a second with [`Error::Interrupted`].
pub(crate) fn run_single<W: Workload>(
    workload: &W,
    n: u64,
    interrupt: &Interrupt,
) -> Result<(Vec<W::Output>, Duration)> {
    match workload.sequential_time(n) {
        Some(known) => {
            let mut out = zeroed(n, "the single-process run's output")?;
            in_pieces(0..n, &mut out, interrupt, |r, o| workload.expected(r, o))
                .map_err(|s| s.into_error(Phase::Baseline, n))?;
            Ok((out, known))
        }
        None => compute(workload, n, interrupt, Phase::Baseline),
    }
}

/// Runs the kernel on `0..n` in this process and times it (`--mode single`): the same
/// kernel calls as [`run_single`], stopped by SIGINT or SIGTERM the same way.
pub(crate) fn run_kernel<W: Workload>(
    workload: &W,
    n: u64,
    interrupt: &Interrupt,
) -> Result<(Vec<W::Output>, Duration)> {
    compute(workload, n, interrupt, Phase::Single)
}

fn compute<W: Workload>(
    workload: &W,
    n: u64,
    interrupt: &Interrupt,
    phase: Phase,
) -> Result<(Vec<W::Output>, Duration)> {
    let began = Instant::now();
    let mut out = zeroed(n, "the single-process run's output")?;
    in_pieces(0..n, &mut out, interrupt, |r, o| workload.kernel(r, o))
        .map_err(|s| s.into_error(phase, n))?;
    Ok((out, began.elapsed()))
}

/// A zeroed buffer of `n` elements, or an error naming its size and `ulimit -v` when the
/// allocator cannot provide it. The pages are mapped lazily, as `calloc` maps them: they
/// are faulted in (and paid for) when the kernel first writes them.
pub(crate) fn zeroed<T: bytemuck::Zeroable>(n: u64, what: &str) -> Result<Vec<T>> {
    let bytes = u128::from(n) * std::mem::size_of::<T>() as u128;
    let fail = || {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!(
                "cannot allocate {} for {what}: the system refused the memory (see `ulimit -v` \
                 and free memory); use a smaller N",
                crate::units::bytes(bytes)
            ),
        ))
    };
    let len = usize::try_from(n).map_err(|_| fail())?;
    bytemuck::allocation::try_zeroed_vec(len).map_err(|()| fail())
}

/// How long one piece of in-process work should take: long enough that the check between
/// pieces costs nothing measurable, short enough that a Ctrl-C is noticed at once.
const PIECE: Duration = Duration::from_millis(20);

/// A stop request noticed between two pieces of in-process work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stopped {
    /// The signal that asked to stop.
    pub signal: i32,
    /// Elements finished before the stop.
    pub done: u64,
}

impl Stopped {
    /// The error for a stop during `phase` of a job of `n` elements.
    pub(crate) fn into_error(self, phase: Phase, n: u64) -> Error {
        Error::Interrupted {
            signal: self.signal,
            phase,
            chunks_done: 0,
            chunks: 0,
            elements_done: self.done,
            n,
            workers: 0,
            needed_term: 0,
            needed_kill: 0,
        }
    }
}

/// Calls `f` on consecutive pieces of `range` and the matching parts of `out`, checking
/// `interrupt` between pieces. Pieces start at one element and double while they take
/// less than a quarter of [`PIECE`] (halving when longer), so an expensive element and a
/// cheap one are both checked every few milliseconds whatever the workload.
pub(crate) fn in_pieces<T>(
    range: Range<u64>,
    out: &mut [T],
    interrupt: &Interrupt,
    mut f: impl FnMut(Range<u64>, &mut [T]),
) -> std::result::Result<(), Stopped> {
    let mut size = 1usize;
    let mut at = 0usize;
    while at < out.len() {
        if let Some(signal) = interrupt.requested() {
            return Err(Stopped {
                signal,
                done: at as u64,
            });
        }
        let len = size.min(out.len() - at);
        let start = range.start + at as u64;
        let began = Instant::now();
        f(start..start + len as u64, &mut out[at..at + len]);
        let took = began.elapsed();
        at += len;
        if took < PIECE / 4 {
            size = size.saturating_mul(2);
        } else if took > PIECE {
            size = (size / 2).max(1);
        }
    }
    Ok(())
}

/// The wrapping (mod 2^64) sum of the elements, each widened to `u64`.
pub(crate) fn checksum<T: Element>(xs: &[T]) -> u64 {
    xs.iter().fold(0u64, |acc, &x| acc.wrapping_add(x.widen()))
}

/// [`checksum`], looking at `interrupt` every [`COMPARE_PIECE`] elements.
pub(crate) fn checksum_until<T: Element>(
    xs: &[T],
    interrupt: &Interrupt,
) -> std::result::Result<u64, Stopped> {
    let mut sum = 0u64;
    for (k, piece) in xs.chunks(COMPARE_PIECE).enumerate() {
        if let Some(signal) = interrupt.requested() {
            return Err(Stopped {
                signal,
                done: (k * COMPARE_PIECE) as u64,
            });
        }
        sum = sum.wrapping_add(checksum(piece));
    }
    Ok(sum)
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
pub(crate) fn first_mismatch<T: Element>(pool: &[T], baseline: &[T]) -> Option<Mismatch> {
    match compare(pool, baseline, &Interrupt::new()) {
        Ok(found) => found,
        Err(_) => unreachable!("nobody can set a fresh Interrupt"),
    }
}

/// Elements compared between two looks at the interrupt flag (8 MiB of `u64`s: a few
/// milliseconds of `memcmp`).
const COMPARE_PIECE: usize = 1 << 20;

/// [`first_mismatch`], looking at `interrupt` every [`COMPARE_PIECE`] elements.
pub(crate) fn compare<T: Element>(
    pool: &[T],
    baseline: &[T],
    interrupt: &Interrupt,
) -> std::result::Result<Option<Mismatch>, Stopped> {
    let common = pool.len().min(baseline.len());
    for at in (0..common).step_by(COMPARE_PIECE) {
        if let Some(signal) = interrupt.requested() {
            return Err(Stopped {
                signal,
                done: at as u64,
            });
        }
        let end = (at + COMPARE_PIECE).min(common);
        let (a, b) = (&pool[at..end], &baseline[at..end]);
        // Whole-piece comparison first: it is a memcmp, far faster than an element loop.
        if a == b {
            continue;
        }
        if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
            return Ok(Some(Mismatch {
                index: (at + i) as u64,
                pool: a[i].widen(),
                baseline: b[i].widen(),
            }));
        }
    }
    if pool.len() == baseline.len() {
        return Ok(None);
    }
    // Same prefix, different lengths.
    Ok(Some(Mismatch {
        index: common as u64,
        pool: pool.get(common).map_or(0, |x| x.widen()),
        baseline: baseline.get(common).map_or(0, |x| x.widen()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Squares;

    #[test]
    fn baseline_checksum_matches_the_closed_form() {
        let n = 100_000u64;
        let (out, _) = run_single(&Squares, n, &Interrupt::new()).unwrap();
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
        let long: Vec<u32> = (0..3 * COMPARE_PIECE as u32).collect();
        let mut other = long.clone();
        other[2 * COMPARE_PIECE + 5] = 0;
        assert_eq!(
            first_mismatch(&other, &long).map(|m| m.index),
            Some(2 * COMPARE_PIECE as u64 + 5)
        );
    }

    #[test]
    fn pieces_cover_the_range_once_in_order_and_stop_when_asked() {
        let mut out = vec![0u64; 100_000];
        let mut next = 10u64;
        in_pieces(10..100_010, &mut out, &Interrupt::new(), |r, o| {
            assert_eq!(r.start, next, "pieces are consecutive");
            assert_eq!(o.len() as u64, r.end - r.start);
            next = r.end;
            for (x, i) in o.iter_mut().zip(r) {
                *x = i;
            }
        })
        .unwrap();
        assert_eq!(next, 100_010);
        assert!(out.iter().zip(10..).all(|(&x, i)| x == i));

        let stop = Interrupt::new();
        let mut calls = 0;
        let stopped = in_pieces(0..100, &mut out[..100], &stop, |_, _| {
            calls += 1;
            stop.request(15);
        });
        assert_eq!(
            stopped,
            Err(Stopped {
                signal: 15,
                done: 1
            })
        );
        assert_eq!(calls, 1);
    }

    #[test]
    fn verification_stops_when_asked() {
        let stop = Interrupt::new();
        stop.request(2);
        let xs = vec![1u64; 3 * COMPARE_PIECE];
        assert_eq!(
            compare(&xs, &xs, &stop),
            Err(Stopped { signal: 2, done: 0 })
        );
        assert_eq!(
            checksum_until(&xs, &stop),
            Err(Stopped { signal: 2, done: 0 })
        );
        assert_eq!(checksum_until(&xs, &Interrupt::new()), Ok(xs.len() as u64));
    }

    #[test]
    fn an_allocation_the_system_refuses_is_an_error_naming_its_size() {
        let e = zeroed::<u64>(u64::MAX / 16, "the test's buffer").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("the test's buffer") && text.contains("ulimit -v"),
            "{text}"
        );
    }
}
