//! cargo build --release --features mpi --example mpi_leibniz
//! mpirun -np 3 --oversubscribe target/release/examples/mpi_leibniz
//!
//! Your own workload on the ranks of an `mpirun`: the same `Workload` and `Reduce` you
//! would run on a pool, handed to `procpool::mpi::run_reduce` from your own MPI program.
//! Needs the `mpi` feature and Open MPI (docs/mpi.md).
//!
//! Leibniz's series, π/4 = 1 − 1/3 + 1/5 − …, cut into blocks: element i is the sum of the
//! terms i·256 to i·256 + 255, so each element is a few hundred floating-point operations
//! and little output. Each worker rank adds up its chunk's elements, and rank 0 combines
//! the sums in chunk order: π/4. Rank 0 also computes every element in one process,
//! compares them element by element, and checks the combined sum against the same sums
//! taken over the same chunks, bit for bit.
//!
//! Every rank runs this same `main`: rank 0 gets the report, the workers `None`. Started
//! without mpirun, it is a single rank, and says to start it with `mpirun -np K`.

use std::ops::Range;

use procpool::mpi::{MpiOptions, run_reduce};
use procpool::{Reduce, RunOptions, Workload};
use serde::{Deserialize, Serialize};

/// Leibniz's series for π/4, `block` terms per element.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Leibniz {
    block: u64,
}

impl Workload for Leibniz {
    const NAME: &'static str = "leibniz";
    type Output = f64;

    fn kernel(&self, range: Range<u64>, out: &mut [f64]) {
        for (sum, i) in out.iter_mut().zip(range) {
            *sum = (i * self.block..(i + 1) * self.block)
                .map(|k| {
                    let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
                    sign / (2 * k + 1) as f64
                })
                .sum();
        }
    }
}

/// The sum of a chunk's terms. Floating-point addition is not associative, so the sum
/// depends on the chunks; procpool combines them in chunk order, and the single-process
/// check sums over the same chunks, so both agree bit for bit.
impl Reduce for Leibniz {
    type Acc = f64;

    fn identity(&self) -> f64 {
        0.0
    }

    fn reduce_chunk(&self, _range: Range<u64>, out: &[f64]) -> f64 {
        out.iter().sum()
    }

    fn combine(&self, left: f64, right: f64) -> f64 {
        left + right
    }
}

fn main() -> std::process::ExitCode {
    let workload = Leibniz { block: 256 };
    let elements = 1_000_000;
    let terms = elements * workload.block;
    // The run's options as for a pool (the worker count is mpirun's: ranks minus one).
    let options = MpiOptions {
        run: RunOptions::default(),
        ..MpiOptions::default()
    };
    match run_reduce(&workload, elements, &options) {
        Ok(Some(report)) => {
            print!("{}", procpool::report::render_text(&report));
            let quarter = report.reduction.as_ref().and_then(|r| r.as_f64());
            let pi = 4.0 * quarter.unwrap_or(f64::NAN);
            println!(
                "π ≈ {pi:.9} from {terms} terms (error {:.1e}), verified: {:?}",
                (pi - std::f64::consts::PI).abs(),
                report.verified
            );
            match report.verified {
                Some(true) => std::process::ExitCode::SUCCESS,
                _ => std::process::ExitCode::FAILURE,
            }
        }
        // A worker rank: rank 0 reports.
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpi_leibniz: {e}");
            std::process::ExitCode::from(if e.is_invalid_input() { 2 } else { 1 })
        }
    }
}
