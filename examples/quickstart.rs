//! cargo run --release --example quickstart
//!
//! A built-in workload from the library: a whole measured run (pool, single-process
//! baseline, verification) and its report.

use procpool::RunOptions;
use procpool::workload::Primes;

fn main() -> Result<(), procpool::Error> {
    // First thing in main: when this binary is re-executed as a worker, this call serves the
    // parent and never returns.
    procpool::init();

    let options = RunOptions::new(2);
    // `run_inspect` hands over the verified output (one u8 per number: 1 if prime).
    let mut primes = 0u64;
    let report = procpool::run_inspect(&Primes, 1_000_000, &options, |out| {
        primes = out.iter().map(|&p| u64::from(p)).sum();
    })?;
    print!("{}", procpool::report::render_text(&report));

    // Check the answer before trusting any time: there are 78498 primes below 10^6.
    assert_eq!(report.verified, Some(true));
    assert_eq!(primes, 78_498);
    Ok(())
}
