//! The arithmetic of a measurement: timings summarised over repeated runs, ratios with their
//! uncertainty, and the classic scaling metrics (speedup, efficiency, Karp–Flatt, Amdahl).
//!
//! It exists so that every number procpool reports about speed comes from one place, with
//! one definition each, and is unit-tested by hand-computed values rather than trusted.
//! Nothing here measures time itself; the callers hand over seconds.

use serde::Serialize;

/// Repeated timings of one thing, in the unit they were given (procpool uses seconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Arithmetic mean of the samples.
    pub mean: f64,
    /// Sample standard deviation (divided by `runs - 1`); 0 for a single sample.
    pub sd: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub runs: usize,
}

/// Mean, sample standard deviation, minimum and maximum of `samples`; `None` when empty.
///
/// ```
/// let s = procpool::lab::measure::summarize(&[1.0, 2.0, 3.0]).unwrap();
/// assert_eq!((s.mean, s.sd, s.min, s.max, s.runs), (2.0, 1.0, 1.0, 3.0, 3));
/// ```
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let n = samples.len();
    if n == 0 {
        return None;
    }
    let mean = samples.iter().sum::<f64>() / n as f64;
    let sd = if n == 1 {
        0.0
    } else {
        let squares: f64 = samples.iter().map(|x| (x - mean) * (x - mean)).sum();
        (squares / (n - 1) as f64).sqrt()
    };
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(Summary {
        mean,
        sd,
        min,
        max,
        runs: n,
    })
}

/// A ratio of two means and its standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    /// `numerator.mean / denominator.mean`.
    pub value: f64,
    /// Standard deviation of the ratio, by first-order error propagation.
    pub sd: f64,
}

/// The ratio of two means with its propagated standard deviation, as hyperfine computes its
/// relative speed: `value = a.mean / b.mean` and
/// `sd = value * sqrt((a.sd / a.mean)² + (b.sd / b.mean)²)`.
///
/// A side with `sd == 0` adds no uncertainty (even when its mean is 0).
pub fn ratio(numerator: &Summary, denominator: &Summary) -> Ratio {
    let value = numerator.mean / denominator.mean;
    let relative = |s: &Summary| if s.sd == 0.0 { 0.0 } else { s.sd / s.mean };
    let sd = value * relative(numerator).hypot(relative(denominator));
    Ratio {
        value,
        sd: sd.abs(),
    }
}

/// `speedup / workers`: the share of each worker that turned into speed (1.0 is perfect
/// scaling). NaN for 0 workers.
pub fn efficiency(speedup: f64, workers: usize) -> f64 {
    if workers == 0 {
        return f64::NAN;
    }
    speedup / workers as f64
}

/// The Karp–Flatt metric: the serial fraction that a measured `speedup` on `workers`
/// implies, `e = (1/s - 1/p) / (1 - 1/p)`.
///
/// 0 means perfect scaling, 1 means no gain at all; a value that grows with `p` points to
/// overheads that grow with the workers rather than a fixed serial part. Negative for a
/// superlinear speedup. `None` for `p <= 1` or a speedup that is not a positive number.
pub fn karp_flatt(speedup: f64, workers: usize) -> Option<f64> {
    if workers <= 1 || !(speedup > 0.0 && speedup.is_finite()) {
        return None;
    }
    let p = workers as f64;
    Some((1.0 / speedup - 1.0 / p) / (1.0 - 1.0 / p))
}

/// Amdahl's law fitted to measured speedups.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AmdahlFit {
    /// The fitted serial fraction `f`, in `[0, 1]`.
    pub serial_fraction: f64,
    /// `1 / f`: the speedup no number of workers can exceed (`None` when `f` is 0).
    pub ceiling: Option<f64>,
    /// Root-mean-square difference between the measured and the fitted speedups.
    pub rmse: f64,
    /// Number of (workers, speedup) points the fit used.
    pub points: usize,
}

/// Amdahl's law: the speedup on `workers` of a job whose `serial_fraction` cannot run in
/// parallel, `1 / (f + (1 - f) / p)`.
pub fn amdahl_speedup(serial_fraction: f64, workers: f64) -> f64 {
    1.0 / (serial_fraction + (1.0 - serial_fraction) / workers)
}

/// A fitted serial fraction this close to 0 is reported as exactly 0 (no ceiling).
const ZERO_FRACTION: f64 = 1e-9;

/// Fits Amdahl's law to `(workers, speedup)` points: the serial fraction `f` in `[0, 1]`
/// that minimises the squared differences between the measured speedups and
/// [`amdahl_speedup`].
///
/// Points with 0 workers or a speedup that is not a positive number are left out. `None`
/// when fewer than 2 distinct worker counts remain. The search is a grid over `[0, 1]`
/// refined by golden-section search around the best grid point, so a sum of squares with
/// several local minima still finds the lowest.
///
/// ```
/// use procpool::lab::measure::{amdahl_speedup, fit_amdahl};
/// let points: Vec<(usize, f64)> =
///     [1, 2, 4, 8].iter().map(|&p| (p, amdahl_speedup(0.1, p as f64))).collect();
/// let fit = fit_amdahl(&points).unwrap();
/// assert!((fit.serial_fraction - 0.1).abs() < 1e-6);
/// ```
pub fn fit_amdahl(points: &[(usize, f64)]) -> Option<AmdahlFit> {
    let used: Vec<(f64, f64)> = points
        .iter()
        .filter(|&&(p, s)| p > 0 && s > 0.0 && s.is_finite())
        .map(|&(p, s)| (p as f64, s))
        .collect();
    let mut counts: Vec<f64> = used.iter().map(|&(p, _)| p).collect();
    counts.sort_by(f64::total_cmp);
    counts.dedup();
    if counts.len() < 2 {
        return None;
    }
    let sse = |f: f64| -> f64 {
        used.iter()
            .map(|&(p, s)| {
                let r = s - amdahl_speedup(f, p);
                r * r
            })
            .sum()
    };

    const GRID: usize = 1000;
    let step = 1.0 / GRID as f64;
    let best = (0..=GRID)
        .map(|i| i as f64 * step)
        .min_by(|&a, &b| sse(a).total_cmp(&sse(b)))
        .expect("the grid is not empty");
    let mut f = golden_section(&sse, (best - step).max(0.0), (best + step).min(1.0));
    // The refinement never does worse than the grid point it started from.
    if sse(best) < sse(f) {
        f = best;
    }
    if f < ZERO_FRACTION {
        f = 0.0;
    }
    Some(AmdahlFit {
        serial_fraction: f,
        ceiling: (f > 0.0).then(|| 1.0 / f),
        rmse: (sse(f) / used.len() as f64).sqrt(),
        points: used.len(),
    })
}

/// The minimum of `g` on `[lo, hi]`, assuming it is unimodal there.
fn golden_section(g: &dyn Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    let mut a = hi - inv_phi * (hi - lo);
    let mut b = lo + inv_phi * (hi - lo);
    let (mut ga, mut gb) = (g(a), g(b));
    for _ in 0..200 {
        if hi - lo < 1e-14 {
            break;
        }
        if ga <= gb {
            hi = b;
            b = a;
            gb = ga;
            a = hi - inv_phi * (hi - lo);
            ga = g(a);
        } else {
            lo = a;
            a = b;
            ga = gb;
            b = lo + inv_phi * (hi - lo);
            gb = g(b);
        }
    }
    // The end points are candidates too: the minimum may sit on the boundary of [0, 1].
    [lo, (lo + hi) / 2.0, hi]
        .into_iter()
        .min_by(|&x, &y| g(x).total_cmp(&g(y)))
        .expect("three candidates")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn summary(mean: f64, sd: f64) -> Summary {
        Summary {
            mean,
            sd,
            min: mean,
            max: mean,
            runs: 3,
        }
    }

    #[test]
    fn summarize_known_samples() {
        // mean 5, squared deviations 9+1+1+1+0+0+4+16 = 32, sample variance 32/7.
        let s = summarize(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(s.mean, 5.0);
        assert!(close(s.sd, (32.0f64 / 7.0).sqrt(), 1e-12));
        assert_eq!((s.min, s.max, s.runs), (2.0, 9.0, 8));
    }

    #[test]
    fn summarize_one_sample_has_no_spread() {
        let s = summarize(&[0.25]).unwrap();
        assert_eq!(
            s,
            Summary {
                mean: 0.25,
                sd: 0.0,
                min: 0.25,
                max: 0.25,
                runs: 1
            }
        );
    }

    #[test]
    fn summarize_empty_is_none() {
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn ratio_propagates_relative_errors() {
        // 10 ± 1 (10 %) over 5 ± 0.5 (10 %): 2 ± 2·sqrt(0.01 + 0.01) = 2 ± 0.28284…
        let r = ratio(&summary(10.0, 1.0), &summary(5.0, 0.5));
        assert_eq!(r.value, 2.0);
        assert!(close(r.sd, 2.0 * 0.02f64.sqrt(), 1e-12));
        // 3 ± 0.3 (10 %) over 4 ± 0 : 0.75 ± 0.075.
        let r = ratio(&summary(3.0, 0.3), &summary(4.0, 0.0));
        assert_eq!(r.value, 0.75);
        assert!(close(r.sd, 0.075, 1e-12));
    }

    #[test]
    fn ratio_of_exact_values_has_no_spread() {
        let r = ratio(&summary(0.0, 0.0), &summary(2.0, 0.0));
        assert_eq!(
            r,
            Ratio {
                value: 0.0,
                sd: 0.0
            }
        );
    }

    #[test]
    fn efficiency_is_speedup_per_worker() {
        assert_eq!(efficiency(4.0, 8), 0.5);
        assert!(efficiency(1.0, 0).is_nan());
    }

    #[test]
    fn karp_flatt_exact_values() {
        assert_eq!(karp_flatt(2.0, 2), Some(0.0));
        assert_eq!(karp_flatt(1.0, 2), Some(1.0));
        assert!(close(karp_flatt(1.6, 2).unwrap(), 0.25, 1e-12));
        // s = 4/(1 + 3·0.1) on 4 workers is Amdahl with f = 0.1, so e = 0.1.
        let s = amdahl_speedup(0.1, 4.0);
        assert!(close(karp_flatt(s, 4).unwrap(), 0.1, 1e-12));
    }

    #[test]
    fn karp_flatt_undefined_cases() {
        assert_eq!(karp_flatt(1.0, 1), None);
        assert_eq!(karp_flatt(1.0, 0), None);
        assert_eq!(karp_flatt(0.0, 4), None);
        assert_eq!(karp_flatt(-1.0, 4), None);
        assert_eq!(karp_flatt(f64::NAN, 4), None);
    }

    #[test]
    fn amdahl_speedup_limits() {
        assert_eq!(amdahl_speedup(0.0, 8.0), 8.0);
        assert_eq!(amdahl_speedup(1.0, 8.0), 1.0);
        assert!(close(amdahl_speedup(0.1, 1e12), 10.0, 1e-9));
    }

    #[test]
    fn fit_amdahl_recovers_exact_fraction() {
        let points: Vec<(usize, f64)> = [1, 2, 4, 8]
            .iter()
            .map(|&p| (p, amdahl_speedup(0.1, p as f64)))
            .collect();
        let fit = fit_amdahl(&points).unwrap();
        assert!(close(fit.serial_fraction, 0.1, 1e-6), "{fit:?}");
        assert!(close(fit.ceiling.unwrap(), 10.0, 1e-4));
        assert!(fit.rmse < 1e-6);
        assert_eq!(fit.points, 4);
    }

    #[test]
    fn fit_amdahl_recovers_fraction_from_noisy_data() {
        // f = 0.05, with ±3 % multiplicative noise, two samples per worker count.
        let noise = [1.03, 0.98, 0.97, 1.02, 1.01, 0.99, 0.975, 1.025, 1.0, 1.02];
        let points: Vec<(usize, f64)> = [1, 2, 4, 8, 16]
            .iter()
            .flat_map(|&p| [p, p])
            .zip(noise)
            .map(|(p, k)| (p, amdahl_speedup(0.05, p as f64) * k))
            .collect();
        let fit = fit_amdahl(&points).unwrap();
        assert!(close(fit.serial_fraction, 0.05, 0.01), "{fit:?}");
        assert!(fit.rmse > 0.0 && fit.rmse < 0.5, "{fit:?}");
        assert_eq!(fit.points, 10);
    }

    #[test]
    fn fit_amdahl_perfect_scaling_has_no_ceiling() {
        let fit = fit_amdahl(&[(1, 1.0), (2, 2.0), (4, 4.0)]).unwrap();
        assert_eq!(fit.serial_fraction, 0.0);
        assert_eq!(fit.ceiling, None);
        // Superlinear points clamp to f = 0 too.
        let fit = fit_amdahl(&[(1, 1.0), (2, 2.5), (4, 5.0)]).unwrap();
        assert_eq!(fit.serial_fraction, 0.0);
    }

    #[test]
    fn fit_amdahl_no_gain_is_fully_serial() {
        let fit = fit_amdahl(&[(1, 1.0), (2, 0.9), (4, 0.8)]).unwrap();
        assert_eq!(fit.serial_fraction, 1.0);
        assert_eq!(fit.ceiling, Some(1.0));
    }

    #[test]
    fn fit_amdahl_needs_two_worker_counts() {
        assert_eq!(fit_amdahl(&[]), None);
        assert_eq!(fit_amdahl(&[(4, 3.0), (4, 3.2)]), None);
        // Points that cannot be speedups do not count.
        assert_eq!(fit_amdahl(&[(4, 3.0), (0, 1.0), (2, f64::NAN)]), None);
        assert!(fit_amdahl(&[(4, 3.0), (2, 1.8)]).is_some());
    }
}
