//! How close a pool's floating-point output must be to the single-process run's.
//!
//! Verification compares bytes: a kernel that is deterministic gives the same bits in a
//! worker as in the parent. A kernel whose floating-point results may differ in the last
//! bits between processes (a different summation order, a library that picks its code path
//! at run time, a random seed from the process) declares a [`Tolerance`] instead; its
//! elements are then read as a sequence of `f32` or `f64` lanes and compared lane by lane,
//! only where the bytes differ.

use std::fmt;

/// The float type an element is made of, for a [`Tolerance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Lanes of 4 bytes, read as `f32`.
    F32,
    /// Lanes of 8 bytes, read as `f64`.
    F64,
}

impl Lane {
    /// The size of one lane in bytes.
    pub fn size(self) -> usize {
        match self {
            Lane::F32 => 4,
            Lane::F64 => 8,
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lane::F32 => "f32",
            Lane::F64 => "f64",
        })
    }
}

/// How far a workload's floating-point output may stray from the single-process run and
/// still verify ([`Workload::tolerance`](crate::Workload::tolerance)).
///
/// Each output element is read as a sequence of float lanes, all of one type: an `f64` is
/// one lane, an `[f64; 3]` three, a `#[repr(C)]` struct of four `f32`s four. The element's
/// size must be a multiple of the lane's size, or the job is refused before it runs.
///
/// Two lanes match when their bits are equal, or else when neither is NaN nor infinite and
/// they are within **any** of the bounds set: the absolute difference `|pool − baseline| ≤
/// abs`, the relative difference `|pool − baseline| ≤ rel · max(|pool|, |baseline|)`, or at
/// most `ulps` representable values apart (`+0.0` and `−0.0` are 0 apart). So a NaN matches
/// only a NaN with the same bits, and an infinity only itself. With no bound set, lanes
/// must be equal bit for bit.
///
/// ```
/// use procpool::Tolerance;
///
/// // Within 1e-12, or within 1e-9 of the larger value.
/// let close = Tolerance::f64().abs(1e-12).rel(1e-9);
/// assert!(close.lanes_match(&1.0f64.to_le_bytes(), &(1.0 + 1e-10f64).to_le_bytes()));
/// assert!(!close.lanes_match(&1.0f64.to_le_bytes(), &1.001f64.to_le_bytes()));
///
/// // At most 4 representable f32 values apart.
/// let ulps = Tolerance::f32().ulps(4);
/// let one = 1.0f32;
/// let next = f32::from_bits(one.to_bits() + 3);
/// assert!(ulps.lanes_match(&one.to_le_bytes(), &next.to_le_bytes()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Tolerance {
    lane: Lane,
    abs: Option<f64>,
    rel: Option<f64>,
    ulps: Option<u64>,
}

/// Where two elements' lanes fail a [`Tolerance`]: the first lane out of bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LaneMiss {
    /// The lane's position in the element (0 for the first).
    pub lane: usize,
    /// `pool − baseline` in that lane (NaN when either is NaN).
    pub difference: f64,
    /// How many representable values apart the two are (`None` when either is NaN).
    pub ulps: Option<u64>,
}

impl Tolerance {
    /// A tolerance for elements made of `f32` lanes; set bounds with [`Tolerance::abs`],
    /// [`Tolerance::rel`] and [`Tolerance::ulps`].
    pub fn f32() -> Self {
        Self::on(Lane::F32)
    }

    /// A tolerance for elements made of `f64` lanes; set bounds with [`Tolerance::abs`],
    /// [`Tolerance::rel`] and [`Tolerance::ulps`].
    pub fn f64() -> Self {
        Self::on(Lane::F64)
    }

    /// A tolerance for elements made of `lane`s, with no bound set yet.
    pub fn on(lane: Lane) -> Self {
        Tolerance {
            lane,
            abs: None,
            rel: None,
            ulps: None,
        }
    }

    /// Lanes whose absolute difference is at most `abs` match.
    pub fn abs(mut self, abs: f64) -> Self {
        self.abs = Some(abs);
        self
    }

    /// Lanes whose difference is at most `rel` times the larger of their magnitudes match.
    pub fn rel(mut self, rel: f64) -> Self {
        self.rel = Some(rel);
        self
    }

    /// Lanes at most `ulps` representable values apart match.
    pub fn ulps(mut self, ulps: u64) -> Self {
        self.ulps = Some(ulps);
        self
    }

    /// The float type of the lanes.
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// Why this tolerance cannot apply to elements of `elem_size` bytes, if it cannot: the
    /// lane size does not divide the element size, or a bound is negative or NaN.
    pub(crate) fn check(&self, elem_size: usize) -> Result<(), String> {
        let lane = self.lane.size();
        if elem_size == 0 || !elem_size.is_multiple_of(lane) {
            return Err(format!(
                "a tolerance on {} lanes ({lane} bytes each) cannot apply to {elem_size}-byte \
                 elements: an element must be a whole number of lanes (Tolerance::f32 for \
                 elements made of f32s, Tolerance::f64 for f64s)",
                self.lane,
            ));
        }
        for (name, bound) in [("abs", self.abs), ("rel", self.rel)] {
            if let Some(b) = bound
                && (b.is_nan() || b < 0.0)
            {
                return Err(format!(
                    "the tolerance's `{name}` bound must be zero or more (got {b})"
                ));
            }
        }
        Ok(())
    }

    /// True when the two elements' bytes (`pool` and `baseline`, of equal length, a
    /// multiple of the lane size) match lane by lane.
    pub fn lanes_match(&self, pool: &[u8], baseline: &[u8]) -> bool {
        self.first_miss(pool, baseline).is_none()
    }

    /// The first lane where `pool` and `baseline` do not match, if any.
    pub(crate) fn first_miss(&self, pool: &[u8], baseline: &[u8]) -> Option<LaneMiss> {
        let size = self.lane.size();
        let lanes = pool.chunks_exact(size).zip(baseline.chunks_exact(size));
        for (lane, (a, b)) in lanes.enumerate() {
            if a == b {
                continue;
            }
            let (x, y, ulps) = match self.lane {
                Lane::F32 => {
                    let (x, y) = (f32_of(a), f32_of(b));
                    let ulps = ulps_apart(i128::from(x.to_bits()), i128::from(y.to_bits()), 32);
                    (f64::from(x), f64::from(y), ulps)
                }
                Lane::F64 => {
                    let (x, y) = (f64_of(a), f64_of(b));
                    let ulps = ulps_apart(i128::from(x.to_bits()), i128::from(y.to_bits()), 64);
                    (x, y, ulps)
                }
            };
            let finite = x.is_finite() && y.is_finite();
            let ulps = (!x.is_nan() && !y.is_nan()).then_some(ulps);
            let diff = (x - y).abs();
            let within = finite
                && (self.abs.is_some_and(|abs| diff <= abs)
                    || self
                        .rel
                        .is_some_and(|rel| diff <= rel * x.abs().max(y.abs()))
                    || self.ulps.zip(ulps).is_some_and(|(max, d)| d <= max));
            if !within {
                return Some(LaneMiss {
                    lane,
                    difference: x - y,
                    ulps,
                });
            }
        }
        // Lengths that are not a multiple of the lane (refused by `check`): compare the rest.
        let tail = pool.len() - pool.len() % size;
        (pool.get(tail..) != baseline.get(tail..)).then_some(LaneMiss {
            lane: tail / size,
            difference: f64::NAN,
            ulps: None,
        })
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bounds = Vec::new();
        if let Some(abs) = self.abs {
            bounds.push(format!("abs {abs:e}"));
        }
        if let Some(rel) = self.rel {
            bounds.push(format!("rel {rel:e}"));
        }
        if let Some(ulps) = self.ulps {
            bounds.push(format!("{ulps} ulps"));
        }
        if bounds.is_empty() {
            bounds.push("exact".to_string());
        }
        write!(f, "{} on {} lanes", bounds.join(" or "), self.lane)
    }
}

fn f32_of(bytes: &[u8]) -> f32 {
    f32::from_le_bytes(bytes.try_into().expect("a 4-byte lane"))
}

fn f64_of(bytes: &[u8]) -> f64 {
    f64::from_le_bytes(bytes.try_into().expect("an 8-byte lane"))
}

/// How many representable values lie between two floats of `bits` bits given as their bit
/// patterns: the sign-magnitude patterns mapped onto one ordered line (±0 both at 0).
fn ulps_apart(a: i128, b: i128, bits: u32) -> u64 {
    let sign = 1i128 << (bits - 1);
    let line = |x: i128| if x & sign != 0 { -(x & (sign - 1)) } else { x };
    u64::try_from((line(a) - line(b)).unsigned_abs()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f64s(x: f64, y: f64) -> ([u8; 8], [u8; 8]) {
        (x.to_le_bytes(), y.to_le_bytes())
    }

    fn miss64(t: &Tolerance, x: f64, y: f64) -> Option<LaneMiss> {
        let (a, b) = f64s(x, y);
        t.first_miss(&a, &b)
    }

    #[test]
    fn absolute_and_relative_bounds_each_let_a_lane_pass() {
        let abs = Tolerance::f64().abs(1e-6);
        assert_eq!(miss64(&abs, 1.0, 1.0 + 5e-7), None);
        assert_eq!(
            miss64(&abs, 1e9, 1e9 + 5e-7),
            None,
            "within abs, at any scale"
        );
        let far = miss64(&abs, 1.0, 1.0 + 1e-3).expect("beyond abs");
        assert_eq!(far.lane, 0);
        assert!((far.difference + 1e-3).abs() < 1e-12, "{far:?}");

        let rel = Tolerance::f64().rel(1e-6);
        assert_eq!(miss64(&rel, 1e9, 1e9 + 100.0), None, "1e-7 relative");
        assert!(miss64(&rel, 1e-9, 2e-9).is_some(), "half relative");
        assert!(
            miss64(&rel, 0.0, 1e-300).is_some(),
            "anything against 0 is 100 %"
        );

        let either = Tolerance::f64().abs(1e-6).rel(1e-6);
        assert_eq!(miss64(&either, 0.0, 1e-300), None, "abs rescues near zero");
        assert_eq!(
            miss64(&either, 1e9, 1e9 + 100.0),
            None,
            "rel rescues large values"
        );
        assert!(miss64(&either, 1.0, 2.0).is_some());
    }

    #[test]
    fn ulps_count_representable_values_across_zero() {
        let t = Tolerance::f64().ulps(2);
        let one = 1.0f64;
        assert_eq!(miss64(&t, one, f64::from_bits(one.to_bits() + 2)), None);
        let three = miss64(&t, one, f64::from_bits(one.to_bits() + 3)).expect("3 apart");
        assert_eq!(three.ulps, Some(3));
        assert_eq!(miss64(&t, 0.0, -0.0), None, "±0 are 0 apart");
        let tiny = f64::from_bits(1);
        assert_eq!(miss64(&t, tiny, -tiny), None, "2 apart across zero");
        assert_eq!(
            miss64(&Tolerance::f64().ulps(1), tiny, -tiny).unwrap().ulps,
            Some(2)
        );

        let t32 = Tolerance::f32().ulps(1);
        let x = 3.5f32;
        let y = f32::from_bits(x.to_bits() + 1);
        assert!(t32.lanes_match(&x.to_le_bytes(), &y.to_le_bytes()));
        let z = f32::from_bits(x.to_bits() + 2);
        assert!(!t32.lanes_match(&x.to_le_bytes(), &z.to_le_bytes()));
    }

    #[test]
    fn nan_matches_only_the_same_bits_and_infinity_only_itself() {
        let loose = Tolerance::f64().abs(f64::MAX).rel(1e9).ulps(u64::MAX);
        assert_eq!(miss64(&loose, f64::NAN, f64::NAN), None, "equal bits");
        let other_nan = f64::from_bits(f64::NAN.to_bits() | 1);
        let both = miss64(&loose, f64::NAN, other_nan).expect("NaNs with other bits");
        assert!(both.difference.is_nan() && both.ulps.is_none(), "{both:?}");
        assert!(miss64(&loose, f64::NAN, 1.0).is_some());
        assert!(miss64(&loose, 1.0, f64::NAN).is_some());
        assert_eq!(miss64(&loose, f64::INFINITY, f64::INFINITY), None);
        assert!(miss64(&loose, f64::INFINITY, f64::MAX).is_some());
        assert!(miss64(&loose, f64::INFINITY, f64::NEG_INFINITY).is_some());
        let exact = Tolerance::f64();
        assert_eq!(miss64(&exact, 2.0, 2.0), None);
        assert!(
            miss64(&exact, 0.0, -0.0).is_some(),
            "no bound: bits must match"
        );
    }

    #[test]
    fn an_element_is_a_sequence_of_lanes_and_the_first_bad_one_is_named() {
        let t = Tolerance::f32().abs(0.01);
        let a: [f32; 3] = [1.0, 2.0, 3.0];
        let b: [f32; 3] = [1.001, 2.5, 9.0];
        let miss = t
            .first_miss(bytemuck::bytes_of(&a), bytemuck::bytes_of(&b))
            .expect("lane 1 is 0.5 off");
        assert_eq!(miss.lane, 1);
        assert!((miss.difference + 0.5).abs() < 1e-6, "{miss:?}");
        let c: [f32; 3] = [1.001, 2.0, 2.999];
        assert!(t.lanes_match(bytemuck::bytes_of(&a), bytemuck::bytes_of(&c)));
    }

    #[test]
    fn lane_sizes_must_divide_the_element_and_bounds_must_be_sensible() {
        assert_eq!(Tolerance::f64().check(8), Ok(()));
        assert_eq!(Tolerance::f64().check(24), Ok(()));
        assert_eq!(Tolerance::f32().check(12), Ok(()));
        assert_eq!(Tolerance::f32().check(8), Ok(()), "two f32 lanes");
        let e = Tolerance::f64().check(12).unwrap_err();
        assert!(e.contains("12-byte elements") && e.contains("f32s"), "{e}");
        assert!(Tolerance::f32().check(2).is_err());
        assert!(Tolerance::f32().check(0).is_err());
        let e = Tolerance::f64().abs(-1.0).check(8).unwrap_err();
        assert!(e.contains("`abs`"), "{e}");
        assert!(Tolerance::f64().rel(f64::NAN).check(8).is_err());
        assert_eq!(
            Tolerance::f64().abs(1e-9).ulps(4).to_string(),
            "abs 1e-9 or 4 ulps on f64 lanes"
        );
    }
}
