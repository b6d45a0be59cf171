//! cargo bench --bench advice [-- NAME]
//!
//! The advice matrix: runs each job whose limit is known (`advice/scenarios.rs`), checks
//! that the first advice names that limit, follows the advice (the first flag it suggests,
//! the quiet machine it asks for, or the larger job), and measures the speedup before and
//! after, alternating the two twice (each a `--repeat 3 --warmup 1` run). Prints the table
//! the README shows, with the load average at the start and the end.

// Shared with tests/advice_matrix.rs, which reads the smoke test's fields.
#[path = "advice/scenarios.rs"]
#[allow(dead_code)]
mod scenarios;

use std::time::Duration;

use scenarios::{Follow, Hog, SCENARIOS, args, cpu_share, first_advice, follow, run};

const BIN: &str = env!("CARGO_BIN_EXE_procpool");
const LIMIT: Duration = Duration::from_secs(300);

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Huge pages free now (`HugePages_Free`).
fn huge_pages_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The pages the advice says to reserve ("it needs N huge pages").
fn pages_needed(text: &str) -> Option<u64> {
    let at = text.find("it needs ")? + "it needs ".len();
    text[at..].split_whitespace().next()?.parse().ok()
}

/// The speedup of one run (or, where following the advice means a quiet machine, whose
/// baseline the hog slowed as much as the pool, the pool's wall time), and its report.
fn speedup(args: &[String], hog: bool, cores: usize) -> (f64, serde_json::Value) {
    let _hog = hog.then(|| Hog::start(cores));
    let r = run(BIN, args, LIMIT);
    (r["speedup"].as_f64().unwrap_or(f64::NAN), r)
}

/// A ratio or speedup with three significant digits.
fn x(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1}×")
    } else if v >= 0.1 {
        format!("{v:.2}×")
    } else {
        format!("{v:.4}×")
    }
}

/// Attempts at a row on a machine other processes keep busy: a row whose own limit is not
/// a busy machine is run again (after a pause) while its advice says `contended`.
const ATTEMPTS: usize = 5;

fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let repeat = ["--repeat", "3", "--warmup", "1"];
    println!(
        "advice matrix on {cores} CPUs; load average at the start: {}\n",
        loadavg()
    );
    println!(
        "| scenario | job | advice named | CPU share | followed | speedup before | after | after \
         / before |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for s in SCENARIOS {
        if only.as_deref().is_some_and(|o| !s.name.contains(o)) {
            continue;
        }
        let flags: Vec<String> = s.flags.iter().map(|f| f.to_string()).collect();
        let job: Vec<String> = s.job.iter().map(|f| f.to_string()).collect();
        let before_args = args(&flags, &job, &repeat);
        let (mut first, mut report) = speedup(&before_args, s.hog, cores);
        let mut tries = 1;
        while !s.hog && first_advice(&report).0 == "contended" && tries < ATTEMPTS {
            std::thread::sleep(Duration::from_secs(3));
            (first, report) = speedup(&before_args, s.hog, cores);
            tries += 1;
        }
        let tries = if tries > 1 {
            format!(" (attempt {tries})")
        } else {
            String::new()
        };
        let (limit, text) = first_advice(&report);
        let named = if limit == s.expected {
            format!("`{limit}`")
        } else {
            format!("`{limit}` (expected `{}`)", s.expected)
        };
        let shown = format!("{} {}", s.flags.join(" "), s.job.join(" "));
        let share = cpu_share(&report).map_or("–".to_string(), |x| format!("{x:.2}"));
        let named = format!("{named}{tries} | {share}");
        if limit == "contended" && !s.hog {
            println!(
                "| {} | `{shown}` | {named} | not followed: other processes kept the machine \
                 busy (load {}) | {} | | |",
                s.name,
                loadavg(),
                x(first)
            );
            continue;
        }
        let followed = follow(&limit, &text, s.flags, s.job);
        let (after_args, after_hog, what) = match &followed {
            Some(Follow::Flags(f)) => (args(f, &job, &repeat), s.hog, format!("`{}`", f.join(" "))),
            Some(Follow::QuietMachine) => (before_args.clone(), false, "hog stopped".to_string()),
            Some(Follow::MoreWork(j)) => (
                args(&flags, j, &repeat),
                s.hog,
                format!("`{}`", j.join(" ")),
            ),
            None => {
                println!(
                    "| {} | `{shown}` | {named} | nothing to change | {} | | |",
                    s.name,
                    x(first)
                );
                continue;
            }
        };
        if after_args.iter().any(|a| a == "--huge-pages")
            && let Some(needed) = pages_needed(&text)
            && huge_pages_free() < needed
        {
            println!(
                "| {} | `{shown}` | {named} | {what}: not run, {needed} huge pages needed and {} \
                 free | {} | | |",
                s.name,
                huge_pages_free(),
                x(first)
            );
            continue;
        }
        // Before and after alternately, twice each (the first "before" is the one above).
        // Where the advice asks for a quiet machine, the hog slows the single process as
        // much as the pool, so the pool's wall time is compared rather than the speedup.
        let wall = |r: &serde_json::Value| r["pool_wall_s"].as_f64().unwrap_or(f64::NAN);
        let mut before = vec![(first, wall(&report))];
        let mut after = Vec::new();
        for round in 0..3 {
            if round % 2 == 0 {
                let (sp, r) = speedup(&after_args, after_hog, cores);
                after.push((sp, wall(&r)));
            } else {
                let (sp, r) = speedup(&before_args, s.hog, cores);
                before.push((sp, wall(&r)));
            }
        }
        let mean = |xs: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
            xs.iter().map(f).sum::<f64>() / xs.len() as f64
        };
        let (b, a) = (mean(&before, |p| p.0), mean(&after, |p| p.0));
        let gain = if matches!(followed, Some(Follow::QuietMachine)) {
            let (bw, aw) = (mean(&before, |p| p.1), mean(&after, |p| p.1));
            format!("{} (pool {:.0} → {:.0} ms)", x(bw / aw), bw * 1e3, aw * 1e3)
        } else {
            x(a / b)
        };
        println!(
            "| {} | `{shown}` | {named} | {what} | {} | {} | {gain} |",
            s.name,
            x(b),
            x(a)
        );
    }
    println!("\nload average at the end: {}", loadavg());
}
