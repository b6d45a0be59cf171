//! cargo run --release --example closures
//!
//! Your kernel as a closure: no trait, no name, no registry. Each closure runs in the
//! worker processes (this binary, started again or forked), so it captures nothing: what
//! it needs travels as `params` (the closure's first argument) or an `Input`.

use procpool::{Closure, Error, Pool, RunOptions, StartMethod};

fn main() -> Result<(), Error> {
    procpool::init(); // first thing in main: a worker serves here and never returns

    // 0. While this process is single-threaded it may fork its workers directly; closures
    //    run in forked workers as in those of the fork server (the default) or spawned ones.
    let mut forked = Pool::builder()
        .workers(2)
        .start(StartMethod::Fork)
        .build()?;
    let cubes = forked.map_range(1000, &(), |_, i| i * i * i)?;
    assert_eq!(cubes[10], 1000);
    println!("fork: {} cubes from forked workers", cubes.len());
    drop(cubes);
    drop(forked);

    // Spawned workers (an exec of this binary) run the closure too, and see this
    // process's temporary directory, not the pool's private one.
    let mut spawned = Pool::builder()
        .workers(2)
        .start(StartMethod::Spawn)
        .build()?;
    let tmp = spawned.map_range(2, &(), |_, _| temp_dir_bytes())?;
    assert!(
        tmp.iter().all(|theirs| *theirs == temp_dir_bytes()),
        "TMPDIR"
    );
    drop(tmp);
    drop(spawned);

    let mut pool = Pool::builder().workers(2).build()?;

    // 1. A map over an index range: element i is f(&params, i).
    let scale = 0.5_f64;
    let run = pool.map_range(1_000_000, &scale, |scale, i| (i as f64).sqrt() * scale)?;
    assert_eq!(run[400], 10.0);
    let first = run.to_vec(); // an owned copy: the pool is free again
    println!(
        "map_range: {} elements, [400] = {}",
        first.len(),
        first[400]
    );

    // 2. A map over items you already have, shared read-only through one sealed memfd.
    let words: Vec<[u8; 8]> = (0..100_000u64).map(|i| i.to_le_bytes()).collect();
    let run = pool.map_items(&words, &(), |_, word| {
        word.iter().map(|&b| u32::from(b)).sum::<u32>()
    })?;
    println!(
        "map_items: {} byte sums, IPC {} bytes",
        run.len(),
        run.stats().ipc_bytes
    );
    assert_eq!(run[257], 2);
    drop(run);

    // 3. A reduction, combined in chunk order: the same float sum on every run.
    let basel = pool.fold_range(
        1_000_000,
        &(),
        0.0,
        |_, acc: f64, i| acc + 1.0 / ((i + 1) * (i + 1)) as f64,
        |a, b| a + b,
    )?;
    println!(
        "fold_range: sum of 1/k² = {basel:.6} (π²/6 = {:.6})",
        std::f64::consts::PI.powi(2) / 6.0
    );
    assert!((basel - std::f64::consts::PI.powi(2) / 6.0).abs() < 1e-5);

    // 4. A fallible closure: the first error fails the job, naming chunk, range and worker;
    //    the same workers run the next job.
    let pids = pool.pids();
    let failed = pool.try_map_range(1000, &500u64, |limit, i| {
        if i < *limit {
            Ok(i)
        } else {
            Err(format!("{i} is over the limit {limit}"))
        }
    });
    match failed {
        Err(error @ Error::KernelFailed { .. }) => println!("try_map_range: {error}"),
        other => panic!(
            "expected a kernel error, got {:?}",
            other.map(|run| run.len())
        ),
    }
    assert_eq!(pool.pids(), pids, "the workers stayed");

    // 5. The lab: the same closure measured against one process, verified, explained.
    let job = Closure::map(scale, |scale, i| (i as f64).sqrt() * scale);
    let report = procpool::run(&job, 2_000_000, &RunOptions::new(2))?;
    assert_eq!(report.verified, Some(true));
    print!("{}", procpool::report::render_text(&report));
    Ok(())
}

/// `std::env::temp_dir()`'s first 64 bytes, padded with zeros.
fn temp_dir_bytes() -> [u8; 64] {
    let mut out = [0u8; 64];
    let dir = std::env::temp_dir();
    let bytes = dir.as_os_str().as_encoded_bytes();
    let len = bytes.len().min(64);
    out[..len].copy_from_slice(&bytes[..len]);
    out
}
