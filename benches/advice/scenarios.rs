//! The advice matrix: jobs whose limit is known, what the advice must name for each, and how
//! to follow the advice it gives. Shared by `cargo bench --bench advice` (which follows the
//! advice and measures the speedup before and after) and `tests/advice_matrix.rs` (which
//! checks the names only).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One known-limit job.
pub(crate) struct Scenario {
    /// The row's name in the table.
    pub(crate) name: &'static str,
    /// The `limit` the first advice must name.
    pub(crate) expected: &'static str,
    /// Options before the workload.
    pub(crate) flags: &'static [&'static str],
    /// The workload and its arguments.
    pub(crate) job: &'static [&'static str],
    /// Run next to one CPU-bound process per core.
    pub(crate) hog: bool,
    /// The smaller job the smoke test runs on the unoptimized build, in a few seconds.
    pub(crate) smoke_job: &'static [&'static str],
    /// The smoke test runs an unoptimized build, whose kernels are several times slower:
    /// true where the limit's evidence is a speed ratio that build does not reach (results
    /// written at 1 GB/s, compute inflated by faults), so the smoke test accepts "scaling"
    /// there too, and only a wrong limit fails it.
    pub(crate) optimized_only: bool,
}

/// The matrix, in the order the README's table shows it.
pub(crate) const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "memory-bound",
        expected: "memory-bound",
        flags: &["--workers", "2"],
        job: &["squares", "1e7"],
        hog: false,
        smoke_job: &["squares", "2e6"],
        optimized_only: true,
    },
    Scenario {
        name: "dispatch-bound on the channels",
        expected: "ipc-bound",
        flags: &[
            "--workers",
            "2",
            "--dispatch",
            "channel",
            "--chunk-size",
            "1",
        ],
        job: &["squares", "200000"],
        hog: false,
        smoke_job: &["squares", "20000"],
        optimized_only: false,
    },
    Scenario {
        name: "chunks too short on the queue",
        expected: "short-chunks",
        flags: &["--workers", "2", "--chunk-size", "1000"],
        job: &["squares", "1e7"],
        hog: false,
        smoke_job: &["squares", "2e6"],
        optimized_only: true,
    },
    Scenario {
        name: "a chunk's claim above its compute",
        expected: "ipc-bound",
        flags: &["--workers", "2", "--chunk-size", "1"],
        job: &["spin", "100000", "--us", "0"],
        hog: false,
        smoke_job: &["spin", "20000", "--us", "0"],
        optimized_only: false,
    },
    Scenario {
        name: "static imbalance",
        expected: "imbalanced",
        flags: &["--workers", "2", "--schedule", "static"],
        job: &["primes", "3000000"],
        hog: false,
        smoke_job: &["primes", "1000000"],
        optimized_only: true,
    },
    Scenario {
        name: "oversubscription",
        expected: "oversubscribed",
        flags: &["--workers", "8"],
        job: &["collatz", "1e6"],
        hog: false,
        smoke_job: &["collatz", "1e5"],
        optimized_only: false,
    },
    Scenario {
        name: "waiting (sleep)",
        expected: "io-bound",
        flags: &["--workers", "2"],
        job: &["sleep", "40", "--ms", "5"],
        hog: false,
        smoke_job: &["sleep", "40", "--ms", "5"],
        optimized_only: false,
    },
    Scenario {
        name: "start-bound short job",
        expected: "start-dominated",
        flags: &["--workers", "2"],
        job: &["hash", "200", "--rounds", "1"],
        hog: false,
        smoke_job: &["hash", "200", "--rounds", "1"],
        optimized_only: false,
    },
    Scenario {
        name: "next to a CPU hog",
        expected: "contended",
        flags: &["--workers", "2"],
        job: &["collatz", "1e6"],
        hog: true,
        smoke_job: &["collatz", "3e5"],
        optimized_only: false,
    },
];

/// `procpool` with `flags`, then `job`, then `extra`, as one argument list.
pub(crate) fn args(flags: &[String], job: &[String], extra: &[&str]) -> Vec<String> {
    flags
        .iter()
        .chain(job)
        .cloned()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
}

/// Runs `procpool args --json` to its end (at most `limit`), and its report.
pub(crate) fn run(bin: &str, args: &[String], limit: Duration) -> Value {
    let mut child = Command::new(bin)
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start procpool");
    let began = Instant::now();
    loop {
        if child.try_wait().expect("wait for procpool").is_some() {
            break;
        }
        if began.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("procpool {args:?} took more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().expect("procpool's output");
    assert!(
        out.status.success(),
        "procpool {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("procpool --json prints JSON")
}

/// The first advice's limit and text.
pub(crate) fn first_advice(report: &Value) -> (String, String) {
    let a = &report["advice"][0];
    (
        a["limit"].as_str().unwrap_or("").to_string(),
        a["text"].as_str().unwrap_or("").to_string(),
    )
}

/// The workers' mean CPU share the report measured, when it did.
pub(crate) fn cpu_share(report: &Value) -> Option<f64> {
    report["contention"]["cpu_share_mean"].as_f64()
}

/// One busy loop per CPU (`sh -c 'while :; do :; done'`), killed and reaped on drop.
pub(crate) struct Hog(Vec<Child>);

impl Hog {
    /// Starts `processes` busy loops.
    pub(crate) fn start(processes: usize) -> Hog {
        Hog((0..processes)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("start a busy loop")
            })
            .collect())
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `--name value` set in `flags` (replaced when there, appended when not).
pub(crate) fn set_flag(flags: &mut Vec<String>, name: &str, value: Option<&str>) {
    if let Some(at) = flags.iter().position(|f| f == name) {
        if let Some(v) = value {
            flags[at + 1] = v.to_string();
        }
        return;
    }
    flags.push(name.to_string());
    if let Some(v) = value {
        flags.push(v.to_string());
    }
}

/// What following an advice changes: the job's options, or what the advice asks of the
/// machine or the job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Follow {
    /// Run with these options instead.
    Flags(Vec<String>),
    /// Run the same job on a quiet machine (the CPU hog stopped).
    QuietMachine,
    /// Give the job more work: n × 100.
    MoreWork(Vec<String>),
}

/// The first suggestion in the advice's `text` (the earliest flag it names), applied to
/// `flags` and `job`; `None` when it suggests nothing to change.
pub(crate) fn follow(limit: &str, text: &str, flags: &[&str], job: &[&str]) -> Option<Follow> {
    let mut flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    match limit {
        "contended" => return Some(Follow::QuietMachine),
        "start-dominated" => {
            let mut job: Vec<String> = job.iter().map(|s| s.to_string()).collect();
            let n: f64 = job.get(1)?.parse().ok()?;
            job[1] = format!("{}", n * 100.0);
            return Some(Follow::MoreWork(job));
        }
        _ => {}
    }
    let number_after = |at: usize, flag: &str| -> Option<String> {
        let digits: String = text[at + flag.len()..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        (!digits.is_empty()).then_some(digits)
    };
    let candidates = [
        "--dispatch queue",
        "--huge-pages",
        "--schedule dynamic",
        "--chunk-size",
        "--workers",
    ];
    let (at, flag) = candidates
        .iter()
        .filter_map(|c| text.find(c).map(|at| (at, *c)))
        .min()?;
    match flag {
        "--dispatch queue" => set_flag(&mut flags, "--dispatch", Some("queue")),
        "--schedule dynamic" => set_flag(&mut flags, "--schedule", Some("dynamic")),
        "--huge-pages" => set_flag(&mut flags, "--huge-pages", None),
        other => {
            let value = number_after(at, other)?;
            set_flag(&mut flags, other, Some(&value));
        }
    }
    Some(Follow::Flags(flags))
}
