//! cargo run --release --example integrate
//!
//! A floating-point kernel of your own, with `f64` output verified within a tolerance.
//!
//! Element i is the integral of f(x) = sin(x)·e^(−x/8) + 1/(1 + x²) over
//! [i·h, (i+1)·h], by Simpson's rule with 1024 subintervals: CPU-bound work, a few
//! thousand floating-point operations per element. The pool computes the elements in
//! worker processes; the lab computes them again in one process and compares.
//!
//! What it shows:
//! - an `f64` output, with nothing to implement for it (any plain-data type is an element);
//! - `Workload::tolerance`: how far the pool's floats may stray from the single-process
//!   run's. This kernel is deterministic, so the bytes match anyway; a kernel whose last
//!   bits may differ between processes (another summation order, SIMD chosen at run time)
//!   would verify within the tolerance, and a mismatch would name the index, both values
//!   and the difference;
//! - the answer checked before the speedup is trusted: the elements add up to the closed
//!   form of the whole integral.

use std::ops::Range;

use procpool::{Registry, RunOptions, Tolerance, Workload};
use serde::{Deserialize, Serialize};

/// The integral of `f` over each of `n` consecutive intervals of width `h` from 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Integrate {
    /// Width of one element's interval.
    h: f64,
    /// Simpson subintervals per element (even).
    steps: u32,
}

/// The integrand's decay rate.
const DECAY: f64 = 1.0 / 8.0;

fn f(x: f64) -> f64 {
    x.sin() * (-DECAY * x).exp() + 1.0 / (1.0 + x * x)
}

/// The integral of `f` over `[0, x]`, in closed form.
fn antiderivative(x: f64) -> f64 {
    let a = DECAY;
    (1.0 - (-a * x).exp() * (a * x.sin() + x.cos())) / (1.0 + a * a) + x.atan()
}

impl Workload for Integrate {
    const NAME: &'static str = "integrate";
    type Output = f64;

    fn kernel(&self, range: Range<u64>, out: &mut [f64]) {
        let m = self.steps;
        let dx = self.h / f64::from(m);
        for (slot, i) in out.iter_mut().zip(range) {
            let a = i as f64 * self.h;
            // Simpson: dx/3 · (f0 + 4 f1 + 2 f2 + 4 f3 + … + 4 f(m−1) + fm).
            let mut sum = f(a) + f(a + self.h);
            for k in 1..m {
                let weight = if k % 2 == 1 { 4.0 } else { 2.0 };
                sum += weight * f(a + f64::from(k) * dx);
            }
            *slot = sum * dx / 3.0;
        }
    }

    fn tolerance(&self) -> Option<Tolerance> {
        // Within 1e-15 absolute (elements near zero) or 1e-12 relative.
        Some(Tolerance::f64().abs(1e-15).rel(1e-12))
    }
}

fn main() -> Result<(), procpool::Error> {
    // First thing in main: a worker (this binary, re-executed) serves here and never
    // returns.
    procpool::init_with(Registry::builtin().register::<Integrate>());

    let n = 20_000u64;
    let length = 20.0;
    let workload = Integrate {
        h: length / n as f64,
        steps: 1024,
    };

    // The pool, the single-process run, the comparison within the tolerance; the verified
    // output is handed over to add up.
    let mut total = 0.0;
    let report = procpool::run_inspect(&workload, n, &RunOptions::new(2), |out| {
        total = out.iter().sum();
    })?;
    print!("{}", procpool::report::render_text(&report));

    // The answer first, then the time.
    assert_eq!(report.verified, Some(true), "{:?}", report.mismatch);
    let exact = antiderivative(length) - antiderivative(0.0);
    assert!(
        (total - exact).abs() < 1e-9,
        "the elements add up to {total}, the closed form is {exact}"
    );
    println!(
        "∫₀^{length} f = {total:.12} (closed form {exact:.12}) from {n} elements of {} \
         Simpson steps; speedup {:.2}× on {} worker processes",
        workload.steps,
        report.speedup.unwrap_or(f64::NAN),
        report.workers
    );
    Ok(())
}
