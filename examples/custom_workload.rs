//! cargo run --release --example custom_workload
//!
//! Your own workload on a pool, in two steps: define it, register it in `main`.
//!
//! The workload estimates π by Monte Carlo: element i throws one dart at the unit square
//! (a point derived from i by a hash, so the run is reproducible) and records 1 if it lands
//! inside the quarter circle. Each worker also counts its chunk's hits (a reduction,
//! `Reduce`), so the parent gets the total without reading the output, or without any
//! output buffer at all (`Pool::reduce`).
//!
//! Its tests (`cargo test --example custom_workload`, and every `cargo test`) run the same
//! workload across real worker processes: `enable_test_support!` below gives the test
//! binary the worker entry its harness-owned `main` cannot.

use std::ops::Range;

use procpool::{Pool, Reduce, Registry, RunOptions, Workload};
use serde::{Deserialize, Serialize};

/// Step 1: the workload. Its fields are its parameters, sent to every worker once per job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MonteCarloPi {
    seed: u64,
}

impl Workload for MonteCarloPi {
    const NAME: &'static str = "monte-carlo-pi";
    type Output = u8;

    fn kernel(&self, range: Range<u64>, out: &mut [u8]) {
        for (slot, i) in out.iter_mut().zip(range) {
            let bits = splitmix64(self.seed ^ splitmix64(i));
            // Two coordinates in [0, 1) from the two halves of the hash.
            let x = (bits >> 32) as f64 / (1u64 << 32) as f64;
            let y = (bits & 0xffff_ffff) as f64 / (1u64 << 32) as f64;
            *slot = u8::from(x * x + y * y < 1.0);
        }
    }
}

/// Optional: a reduction, here the hits of a chunk, added up.
impl Reduce for MonteCarloPi {
    type Acc = u64;

    fn identity(&self) -> u64 {
        0
    }

    fn reduce_chunk(&self, _range: Range<u64>, out: &[u8]) -> u64 {
        out.iter().map(|&hit| u64::from(hit)).sum()
    }

    fn combine(&self, left: u64, right: u64) -> u64 {
        left + right
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The workloads this program's workers can run: the built-ins and ours.
fn registry() -> Registry {
    Registry::builtin().register_reduce::<MonteCarloPi>()
}

fn main() -> Result<(), procpool::Error> {
    // Step 2: register it, first thing in main. A worker (this same binary, re-executed)
    // serves here and never returns; the parent keeps going.
    procpool::init_with(registry());

    let darts = 4_000_000;
    let workload = MonteCarloPi { seed: 42 };

    // A pool of your own: only the hits come back, the sum of the per-chunk counts; the
    // darts themselves are never stored.
    let mut pool = Pool::builder().workers(2).build()?;
    let hits = pool.reduce(&workload, darts)?;
    println!(
        "π ≈ {:.5} from {darts} darts on {} worker processes",
        4.0 * hits.value as f64 / darts as f64,
        hits.stats.workers.len()
    );
    drop(pool);

    // Or a whole measured run: pool, single-process baseline, verification, report.
    let options = RunOptions::new(2);
    let report = procpool::run_reduce(&workload, darts, &options)?;
    assert_eq!(report.verified, Some(true));
    assert_eq!(report.reduction, Some(hits.value.into()));
    print!("{}", procpool::report::render_text(&report));
    Ok(())
}

// The worker entry of this file's test binary (see the tests below).
procpool::enable_test_support!(registry());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_compute_what_one_process_does_and_count_the_hits() {
        let workload = MonteCarloPi { seed: 7 };
        let darts = 200_000;
        let mut pool = Pool::builder()
            .workers(2)
            .test_harness()
            .build()
            .expect("start two workers through this test binary");
        let (run, hits) = pool
            .run_and_reduce_with(&workload, darts, &Default::default())
            .expect("run across two processes");
        let mut expected = vec![0u8; darts as usize];
        workload.kernel(0..darts, &mut expected);
        assert_eq!(run.results(), &expected[..], "element by element");
        assert_eq!(hits, expected.iter().map(|&h| u64::from(h)).sum::<u64>());
        drop(run);
        let only = pool.reduce(&workload, darts).expect("reduce only");
        assert_eq!((only.value, only.stats.shm_bytes), (hits, 0));
        let pi = 4.0 * hits as f64 / darts as f64;
        assert!((pi - std::f64::consts::PI).abs() < 0.02, "π ≈ {pi}");
        let pids = pool.pids();
        assert!(pids.iter().all(|&pid| pid != std::process::id()));
    }
}
