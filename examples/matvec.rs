//! cargo run --release --example matvec
//!
//! A matrix–vector product in the closure form: the 2000 × 2000 matrix (30.5 MiB) and the
//! vector are each placed once in a sealed memfd that every worker maps read-only (an
//! `Input`, passed in the closure's parameters: a closure captures nothing). Each worker
//! computes whole rows and writes them straight into shared memory; the lab runs the same
//! closure in one process, checks the outputs are identical, and reports the speedup with
//! the input bytes beside the IPC bytes. Fifteen lines of code (rayon's version: 13).

use procpool::{Closure, Input, RunOptions};

fn main() -> Result<(), procpool::Error> {
    procpool::init(); // first thing in main: a worker serves here and never returns
    let n = 2000;
    let a: Vec<f64> = (0..n * n).map(|i| (i % 13) as f64 - 6.0).collect();
    let x: Vec<f64> = (0..n).map(|j| 1.0 / (j + 1) as f64).collect();
    let job = Closure::map((Input::new(&a)?, Input::new(&x)?), |(a, x), r| {
        let row = &a[r as usize * x.len()..][..x.len()];
        row.iter().zip(x.iter()).map(|(a, b)| a * b).sum::<f64>()
    });
    let report = procpool::run(&job, n as u64, &RunOptions::new(2))?;
    assert_eq!(report.verified, Some(true)); // the pool's output is the one process's
    print!("{}", procpool::report::render_text(&report));
    Ok(())
}
