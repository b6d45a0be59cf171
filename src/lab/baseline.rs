//! The single-process run and the element-wise verification.
//!
//! The baseline is half of every report, not a test helper: it calls the very same kernel
//! function the workers call, over the whole range in one go, so the comparison measures
//! what processes add and nothing else.

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::engine::interrupt::Interrupt;
use crate::engine::sys::{OsCounts, thread_cpu_ns};
use crate::error::{Error, Phase, Result};
use crate::lab::model::{Mismatch, OsUsage};
use crate::workload::{Element, Tolerance, Workload};
use sha2::{Digest, Sha256};

/// A single-process run: its output, its wall time, and what the kernel counted for its
/// thread (`None` when the time was known without running it).
pub(crate) type Single<T> = (Vec<T>, Duration, Option<OsUsage>);

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
) -> Result<Single<W::Output>> {
    match workload.sequential_time(n) {
        Some(known) => {
            let mut out = zeroed(n, "the single-process run's output")?;
            in_pieces(0..n, &mut out, interrupt, |r, o| workload.expected(r, o))
                .map_err(|s| s.into_error(Phase::Baseline, n))?;
            Ok((out, known, None))
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
) -> Result<Single<W::Output>> {
    compute(workload, n, interrupt, Phase::Single)
}

/// Runs the kernel on `0..n` on this thread: the output, the wall time, and this thread's
/// CPU time, page faults and context switches over the run (`getrusage(RUSAGE_THREAD)`,
/// so nothing another thread of the process does is counted).
fn compute<W: Workload>(
    workload: &W,
    n: u64,
    interrupt: &Interrupt,
    phase: Phase,
) -> Result<Single<W::Output>> {
    let os = OsCounts::this_thread();
    let cpu = thread_cpu_ns();
    let began = Instant::now();
    let mut out = zeroed(n, "the single-process run's output")?;
    in_pieces(0..n, &mut out, interrupt, |r, o| workload.kernel(r, o))
        .map_err(|s| s.into_error(phase, n))?;
    let wall = began.elapsed();
    let cpu_s = thread_cpu_ns().saturating_sub(cpu) as f64 / 1e9;
    let usage = OsCounts::this_thread()
        .zip(os)
        .map(|(now, then)| OsUsage::new(cpu_s, now.since(then)));
    Ok((out, wall, usage))
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

/// A running SHA-256 of an output's bytes in index order, shown as its first 16 hex
/// digits: what the report calls the `checksum`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Checksum(Sha256);

impl Checksum {
    /// Adds the next bytes of the output.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The first 16 hex digits (8 bytes) of the SHA-256 of everything added so far.
    pub(crate) fn hex(&self) -> String {
        let digest = self.0.clone().finalize();
        digest[..CHECKSUM_BYTES]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Bytes of the SHA-256 digest the checksum shows.
const CHECKSUM_BYTES: usize = 8;

/// The checksum of an output: the first 16 hex digits of the SHA-256 of its bytes, the
/// elements in index order as they lie in memory (little-endian).
#[cfg(test)]
pub(crate) fn checksum<T: Element>(xs: &[T]) -> String {
    let mut sum = Checksum::default();
    sum.update(bytemuck::cast_slice(xs));
    sum.hex()
}

/// [`checksum`], looking at `interrupt` every piece of [`COMPARE_PIECE_BYTES`].
pub(crate) fn checksum_until<T: Element>(
    xs: &[T],
    interrupt: &Interrupt,
) -> std::result::Result<String, Stopped> {
    let mut sum = Checksum::default();
    let per_piece = piece_elems::<T>();
    for (k, piece) in xs.chunks(per_piece).enumerate() {
        if let Some(signal) = interrupt.requested() {
            return Err(Stopped {
                signal,
                done: (k * per_piece) as u64,
            });
        }
        sum.update(bytemuck::cast_slice(piece));
    }
    Ok(sum.hex())
}

impl Mismatch {
    /// A mismatch at `index` between `pool` and `baseline` (either may be missing when the
    /// outputs' lengths differ), shown with `Debug`; no lane (see [`compare`] for those).
    fn at<T: Element>(index: u64, pool: Option<&T>, baseline: Option<&T>) -> Mismatch {
        let show = |x: Option<&T>| x.map_or_else(|| "(none)".to_string(), |x| format!("{x:?}"));
        Mismatch {
            index,
            pool: show(pool),
            baseline: show(baseline),
            lane: None,
            difference: None,
            ulps: None,
        }
    }
}

/// Compares two outputs element by element; `None` when they match.
pub(crate) fn first_mismatch<T: Element>(
    pool: &[T],
    baseline: &[T],
    tolerance: Option<&Tolerance>,
) -> Option<Mismatch> {
    match compare(pool, baseline, tolerance, &Interrupt::new()) {
        Ok(found) => found,
        Err(_) => unreachable!("nobody can set a fresh Interrupt"),
    }
}

/// Bytes compared (or hashed) between two looks at the interrupt flag: a few milliseconds
/// of `memcmp`.
const COMPARE_PIECE_BYTES: usize = 8 << 20;

/// Elements of `T` in one piece of about [`COMPARE_PIECE_BYTES`] (at least one).
fn piece_elems<T>() -> usize {
    (COMPARE_PIECE_BYTES / std::mem::size_of::<T>().max(1)).max(1)
}

/// [`first_mismatch`], looking at `interrupt` every piece of [`COMPARE_PIECE_BYTES`].
///
/// Each piece is compared as bytes first (a `memcmp`); only a piece that differs is
/// looked at element by element, and with a `tolerance`, lane by lane.
pub(crate) fn compare<T: Element>(
    pool: &[T],
    baseline: &[T],
    tolerance: Option<&Tolerance>,
    interrupt: &Interrupt,
) -> std::result::Result<Option<Mismatch>, Stopped> {
    let common = pool.len().min(baseline.len());
    for at in (0..common).step_by(piece_elems::<T>()) {
        if let Some(signal) = interrupt.requested() {
            return Err(Stopped {
                signal,
                done: at as u64,
            });
        }
        let end = (at + piece_elems::<T>()).min(common);
        let (a, b) = (&pool[at..end], &baseline[at..end]);
        if bytemuck::cast_slice::<T, u8>(a) == bytemuck::cast_slice::<T, u8>(b) {
            continue;
        }
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let (xb, yb) = (bytemuck::bytes_of(x), bytemuck::bytes_of(y));
            if xb == yb {
                continue;
            }
            let index = (at + i) as u64;
            match tolerance {
                None => return Ok(Some(Mismatch::at(index, Some(x), Some(y)))),
                Some(t) => {
                    if let Some(miss) = t.first_miss(xb, yb) {
                        return Ok(Some(Mismatch {
                            lane: Some(miss.lane),
                            difference: Some(miss.difference).filter(|d| !d.is_nan()),
                            ulps: miss.ulps,
                            ..Mismatch::at(index, Some(x), Some(y))
                        }));
                    }
                }
            }
        }
    }
    if pool.len() == baseline.len() {
        return Ok(None);
    }
    // Same prefix, different lengths.
    Ok(Some(Mismatch::at(
        common as u64,
        pool.get(common),
        baseline.get(common),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Squares;

    #[test]
    fn the_checksum_is_the_sha256_of_the_output_bytes() {
        // Python: hashlib.sha256(bytes(8)).hexdigest()[:16], and of b''.
        assert_eq!(checksum(&[0u64]), "af5570f5a1810b7a");
        assert_eq!(
            checksum(&[0u32, 0]),
            "af5570f5a1810b7a",
            "bytes, whatever the type"
        );
        assert_eq!(checksum::<u8>(&[]), "e3b0c44298fc1c14");
        // b''.join(struct.pack('<Q', i * i) for i in range(1000))
        let (out, _, _) = run_single(&Squares, 1000, &Interrupt::new()).unwrap();
        assert_eq!(checksum(&out), "f82d06f0edae971b");
        assert_eq!(
            checksum_until(&out, &Interrupt::new()).unwrap(),
            checksum(&out)
        );
        // Pieces of a running checksum add up to the whole.
        let mut running = Checksum::default();
        for piece in out.chunks(77) {
            running.update(bytemuck::cast_slice(piece));
        }
        assert_eq!(running.hex(), checksum(&out));
    }

    #[test]
    fn mismatch_reports_the_first_difference_with_both_values() {
        assert_eq!(first_mismatch(&[1u64, 2, 3], &[1, 2, 3], None), None);
        let m = first_mismatch(&[1u64, 9, 3, 8], &[1, 2, 3, 4], None).unwrap();
        assert_eq!(
            (m.index, m.pool.as_str(), m.baseline.as_str()),
            (1, "9", "2")
        );
        assert_eq!((m.lane, m.difference, m.ulps), (None, None, None));
        assert_eq!(
            first_mismatch(&[1u8, 2], &[1], None).map(|m| m.index),
            Some(1)
        );
        let long: Vec<u32> = (0..3 * piece_elems::<u32>() as u32).collect();
        let mut other = long.clone();
        other[2 * piece_elems::<u32>() + 5] = 0;
        assert_eq!(
            first_mismatch(&other, &long, None).map(|m| m.index),
            Some(2 * piece_elems::<u32>() as u64 + 5)
        );
        let arrays = first_mismatch(&[[1.0f32, 2.0]], &[[1.0f32, 2.5]], None).unwrap();
        assert_eq!(
            (arrays.pool.as_str(), arrays.baseline.as_str()),
            ("[1.0, 2.0]", "[1.0, 2.5]")
        );
    }

    #[test]
    fn a_tolerance_lets_close_floats_pass_and_names_the_lane_beyond_it() {
        let base = [[1.0f64, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let mut pool = base;
        pool[0][1] += 1e-12;
        pool[2][1] += 0.5;
        let t = Tolerance::f64().abs(1e-9);
        let m = first_mismatch(&pool, &base, Some(&t)).expect("0.5 is beyond 1e-9");
        assert_eq!((m.index, m.lane, m.difference), (2, Some(1), Some(0.5)));
        assert_eq!(
            (m.pool.as_str(), m.baseline.as_str()),
            ("[5.0, 6.5]", "[5.0, 6.0]")
        );
        pool[2][1] = 6.0;
        assert_eq!(first_mismatch(&pool, &base, Some(&t)), None);
        assert!(first_mismatch(&pool, &base, None).is_some(), "bytes differ");
        let nan = first_mismatch(&[f64::NAN], &[1.0], Some(&t)).unwrap();
        assert_eq!((nan.lane, nan.difference, nan.ulps), (Some(0), None, None));
        assert_eq!(nan.pool, "NaN");
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
        let xs = vec![1u64; 3 * piece_elems::<u64>()];
        assert_eq!(
            compare(&xs, &xs, None, &stop),
            Err(Stopped { signal: 2, done: 0 })
        );
        assert_eq!(
            checksum_until(&xs, &stop),
            Err(Stopped { signal: 2, done: 0 })
        );
        assert_eq!(checksum_until(&xs, &Interrupt::new()), Ok(checksum(&xs)));
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
