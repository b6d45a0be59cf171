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
    let report = procpool::run(&Primes, 1_000_000, &options)?;
    print!("{}", procpool::report::render_text(&report));

    // Check the answer before trusting any time: there are 78498 primes below 10^6.
    assert_eq!(report.verified, Some(true));
    assert_eq!(report.checksum, 78_498);
    Ok(())
}
