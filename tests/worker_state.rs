//! `Workload::setup`: per-worker state built once per worker process (Python's
//! `Pool(initializer=…)`), on real worker processes started through this test binary.

mod common;

use std::ops::Range;
use std::path::PathBuf;

use common::setups;
use procpool::{Dispatch, JobOptions, Pool, Registry, RunOptions, Workload};
use serde::{Deserialize, Serialize};

/// Looks each index up in a table its set-up builds; every set-up appends its process id to
/// `log`, so the test can count them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lookup {
    size: u64,
    log: PathBuf,
    #[serde(skip)]
    table: Vec<u64>,
}

impl Workload for Lookup {
    const NAME: &'static str = "lookup";
    type Output = u64;

    fn setup(&mut self) {
        self.table = (0..self.size).map(|i| i * 7 + 3).collect();
        common::log_setup(&self.log);
    }

    fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
        // Without its set-up the table is empty and this panics: no chunk can be computed.
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = self.table[(i % self.size) as usize];
        }
    }
}

procpool::enable_test_support!(Registry::builtin().register::<Lookup>());

#[test]
fn set_up_runs_once_per_worker_process_and_every_chunk_sees_it() {
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("setups");
        let workload = Lookup {
            size: 1000,
            log: log.clone(),
            table: Vec::new(),
        };
        let mut pool = Pool::builder()
            .workers(2)
            .test_harness()
            .build()
            .expect("two workers through this test binary");
        let options = JobOptions {
            chunk_size: Some(100),
            dispatch,
            ..Default::default()
        };
        let n = 50_000;
        let mut seen = 0;
        for job in 0..2 {
            let run = pool.run_with(&workload, n, &options).expect("run");
            let results = run.results();
            assert!(
                (0..n).all(|i| results[i as usize] == (i % 1000) * 7 + 3),
                "{dispatch}: every chunk read the table"
            );
            let stats = run.stats().clone();
            drop(run);
            assert_eq!(stats.chunks, 500);
            let logged = setups(&log);
            // 500 chunks, yet each worker process set up once at most, the second job of
            // the same workload value included (a worker that got no chunk of the first
            // job sets up in the second).
            let mut distinct = logged.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                logged.len(),
                "{dispatch} job {job}: {logged:?}"
            );
            assert!((1..=2).contains(&logged.len()), "{dispatch}: {logged:?}");
            let pids = pool.pids();
            assert!(
                logged.iter().all(|p| pids.contains(p)),
                "{logged:?} {pids:?}"
            );
            // The report times exactly the set-ups of this job.
            let timed = stats.workers.iter().filter(|w| w.setup_s > 0.0).count();
            assert_eq!(
                timed,
                logged.len() - seen,
                "{dispatch} job {job}: {stats:?}"
            );
            seen = logged.len();
        }
        // Another value of the workload: set up again.
        let other = Lookup {
            size: 10,
            ..workload.clone()
        };
        let before = setups(&log).len();
        let run = pool.run_with(&other, 1000, &options).expect("run");
        assert_eq!(run.results()[13], 3 * 7 + 3);
        assert!(setups(&log).len() > before, "{dispatch}");
    }
}

#[test]
fn the_single_process_run_and_threads_set_up_their_own_copy() {
    let dir = tempfile::tempdir().unwrap();
    let workload = Lookup {
        size: 333,
        log: dir.path().join("setups"),
        table: Vec::new(),
    };
    for mode in [procpool::Mode::Processes, procpool::Mode::Threads] {
        let mut options = RunOptions::new(2);
        options.pool.test_harness = true;
        options.mode = mode;
        let report = procpool::run(&workload, 10_000, &options).expect("a verified run");
        assert_eq!(report.verified, Some(true), "{mode:?}");
    }
    assert!(setups(&dir.path().join("setups")).contains(&std::process::id()));
}
