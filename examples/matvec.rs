//! cargo run --release --example matvec
//!
//! A matrix shared read-only with every worker: 2000 × 2000 `f64` (30.5 MiB) placed once
//! in a sealed memfd ([`procpool::Input`]), multiplied by a block of vectors.
//!
//! Element `i` of the output is `(A · X)[i / V][i % V]`: the dot product of row `i / V` of
//! `A` with vector `i % V` of `X` (V = 16 vectors; with V = 1 it is a plain matrix–vector
//! product). A job's messages carry the two inputs' sizes and indices, never their data:
//! the report prints the input bytes beside the IPC bytes. Each worker maps the same pages
//! the parent's single-process run reads; nobody can write them.

use std::ops::Range;

use procpool::{Input, Pool, Registry, RunOptions, StartMethod, Workload};
use serde::{Deserialize, Serialize};

/// `A · X`, with `A` (`rows × cols`) and `X` (`vectors` vectors of `cols`, one after the
/// other) shared read-only.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MatVec {
    cols: usize,
    vectors: usize,
    matrix: Input<f64>,
    x: Input<f64>,
}

impl Workload for MatVec {
    const NAME: &'static str = "matvec";
    type Output = f64;

    fn kernel(&self, range: Range<u64>, out: &mut [f64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            let (r, k) = (i as usize / self.vectors, i as usize % self.vectors);
            let row = &self.matrix[r * self.cols..(r + 1) * self.cols];
            let x = &self.x[k * self.cols..(k + 1) * self.cols];
            *slot = row.iter().zip(x).map(|(a, b)| a * b).sum();
        }
    }
}

fn registry() -> Registry {
    Registry::builtin().register::<MatVec>()
}

/// A reproducible value in [-1, 1) for index `i`.
fn value(i: u64, seed: u64) -> f64 {
    let mut z = i.wrapping_add(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

fn main() -> Result<(), procpool::Error> {
    // First thing in main: a worker (this binary, re-executed) serves here and exits.
    procpool::init_with(registry());

    let (rows, cols, vectors) = (2000usize, 2000usize, 16usize);
    let matrix: Vec<f64> = (0..(rows * cols) as u64).map(|i| value(i, 1)).collect();
    let x: Vec<f64> = (0..(vectors * cols) as u64).map(|i| value(i, 2)).collect();
    let work = MatVec {
        cols,
        vectors,
        matrix: Input::new(&matrix)?,
        x: Input::new(&x)?,
    };
    drop((matrix, x));
    let n = (rows * vectors) as u64;

    // The answer, computed here in one process first (reading the same shared pages).
    let mut expected = vec![0.0; n as usize];
    work.kernel(0..n, &mut expected);

    // Workers started with fork (this process is still single-threaded): they inherit
    // their sockets; the inputs' descriptors still travel over them, checked and mapped.
    let mut forked = Pool::builder()
        .workers(2)
        .start(StartMethod::Fork)
        .registry(registry())
        .build()?;
    let run = forked.run(&work, n)?;
    assert!(same(run.results(), &expected), "forked workers");
    drop(run);
    drop(forked);

    // A measured run: pool of spawned workers, single-process baseline, verification.
    let workers = std::thread::available_parallelism().map_or(2, |c| c.get().min(4));
    let mut options = RunOptions::new(workers);
    options.repeat = 3;
    let mut checked = false;
    let report = procpool::run_inspect(&work, n, &options, |results| {
        checked = same(results, &expected);
    })?;
    assert!(
        checked,
        "the pool's output equals the single-process computation"
    );
    assert_eq!(report.verified, Some(true));
    assert_eq!(report.input_bytes, ((rows + vectors) * cols * 8) as u64);
    print!("{}", procpool::report::render_text(&report));
    println!(
        "matvec {rows}×{cols} · {vectors} vectors on {workers} processes: speedup {:.2}x; \
         input {:.1} MiB shared read-only, {} bytes of IPC in all",
        report.speedup.unwrap_or(0.0),
        report.input_bytes as f64 / (1 << 20) as f64,
        report.ipc_bytes,
    );
    Ok(())
}

/// Bit-for-bit equality: the same kernel on the same inputs computes the same floats.
fn same(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}
