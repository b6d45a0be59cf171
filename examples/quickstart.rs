//! cargo run --release --example quickstart
//!
//! Your own function across processes in one call: count the primes below a million with
//! a closure, measured against one process, verified, and explained.

use procpool::{Closure, RunOptions};

/// Trial division: slow enough per number to be worth spreading over processes.
fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn main() -> Result<(), procpool::Error> {
    // First thing in main: when this binary runs as a worker, this call serves the parent
    // and never returns.
    procpool::init();

    // Element i is 1 when i is prime. The closure captures nothing: what it needs would go
    // in its first argument (here `()`).
    let job = Closure::map((), |_, i| u8::from(is_prime(i)));
    // `run_inspect` runs a pool and one process, compares their outputs byte for byte, and
    // hands over the verified output.
    let mut primes = 0u64;
    let report = procpool::run_inspect(&job, 1_000_000, &RunOptions::new(2), |out| {
        primes = out.iter().map(|&p| u64::from(p)).sum();
    })?;
    print!("{}", procpool::report::render_text(&report));

    // Check the answer before trusting any time: there are 78498 primes below 10^6.
    assert_eq!(report.verified, Some(true));
    assert_eq!(primes, 78_498);
    Ok(())
}
