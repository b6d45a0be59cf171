//! A library `Pool` used for many jobs in a row holds steady: the same open files, the same
//! worker processes; dropping it stops and reaps every worker.
//!
//! Alone in its own test binary, so no other test's files or children are counted.

use std::time::{Duration, Instant};

use procpool::Pool;
use procpool::workload::Squares;

const EXE: &str = env!("CARGO_BIN_EXE_procpool");

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Children of this test process that still exist (zombies included).
fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces; the fields after its closing ')' do not.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == me {
            kids.push(pid);
        }
    }
    kids.sort();
    kids
}

#[test]
fn a_thousand_jobs_keep_files_and_processes_constant_and_drop_reaps_all() {
    let mut pool = Pool::builder()
        .workers(2)
        .worker_exe(EXE)
        .build()
        .expect("pool starts");
    let pids = {
        let mut p = pool.pids();
        p.sort();
        p
    };
    assert_eq!(children(), pids);

    // Warm up once so lazily created state (thread locals, epoll) exists before counting.
    pool.run(&Squares, 10).unwrap();
    let fds_before = open_fds();
    for job in 0..1000u64 {
        let n = 1 + job % 97;
        let run = pool.run(&Squares, n).unwrap();
        let results = run.results();
        assert_eq!(results.len() as u64, n);
        assert_eq!(results[(n - 1) as usize], (n - 1) * (n - 1), "job {job}");
    }
    assert_eq!(open_fds(), fds_before, "open files grew over 1000 jobs");
    assert_eq!(children(), pids, "worker processes changed over 1000 jobs");

    drop(pool);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(children(), Vec::<u32>::new(), "workers left after drop");
}
