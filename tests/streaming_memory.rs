//! Streaming keeps memory bounded: a job whose output is many windows long never holds more
//! than a few windows in any process. Alone in its test binary, so that the children's
//! resource usage counted here is procpool's alone.

mod common;

use common::{EXIT_OK, Sandbox};
use nix::sys::resource::{UsageWho, getrusage};

#[test]
fn peak_memory_of_the_whole_process_tree_stays_a_few_windows_whatever_n_is() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("squares.bin");
    let sandbox = Sandbox::new();
    // 2·10^7 squares are 160 MB of output; the ring is 3 windows of 1 MiB.
    let out = sandbox.run(&[
        "--workers",
        "2",
        "squares",
        "2e7",
        "--output",
        file.to_str().unwrap(),
        "--window-size",
        "1MiB",
        "--json",
    ]);
    out.assert_code(EXIT_OK);
    sandbox.assert_nothing_left(&out);
    let r = out.json();
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 160_000_000);

    const MIB: u64 = 1 << 20;
    // Each process, as it reports itself.
    let parent = r["parent_peak_rss_bytes"].as_u64().unwrap();
    let workers: u64 = r["per_worker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["peak_rss_bytes"].as_u64().unwrap())
        .sum();
    assert!(
        parent + workers < 64 * MIB,
        "parent {parent} + workers {workers} bytes: {r}"
    );
    // And as the kernel counted them: the largest of procpool and its workers.
    let largest = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap().max_rss() as u64 * 1024;
    assert!(
        largest < 40 * MIB,
        "largest process peaked at {largest} bytes"
    );
}
