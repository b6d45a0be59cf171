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

fn speedup(args: &[String], hog: bool, cores: usize) -> (f64, serde_json::Value) {
    let _hog = hog.then(|| Hog::start(cores));
    let r = run(BIN, args, LIMIT);
    (r["speedup"].as_f64().unwrap_or(f64::NAN), r)
}

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
        let (first, report) = speedup(&before_args, s.hog, cores);
        let (limit, text) = first_advice(&report);
        let named = if limit == s.expected {
            format!("`{limit}`")
        } else {
            format!("`{limit}` (expected `{}`)", s.expected)
        };
        let shown = format!("{} {}", s.flags.join(" "), s.job.join(" "));
        let share = cpu_share(&report).map_or("–".to_string(), |x| format!("{x:.2}"));
        let named = format!("{named} | {share}");
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
                    "| {} | `{shown}` | {named} | nothing to change | {first:.2}× | | |",
                    s.name
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
                 free | {first:.2}× | | |",
                s.name,
                huge_pages_free()
            );
            continue;
        }
        // Before and after alternately, twice each (the first "before" is the one above).
        let mut before = vec![first];
        let mut after = Vec::new();
        after.push(speedup(&after_args, after_hog, cores).0);
        before.push(speedup(&before_args, s.hog, cores).0);
        after.push(speedup(&after_args, after_hog, cores).0);
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
        let (b, a) = (mean(&before), mean(&after));
        println!(
            "| {} | `{shown}` | {named} | {what} | {b:.2}× | {a:.2}× | {:.2}× |",
            s.name,
            a / b
        );
    }
    println!("\nload average at the end: {}", loadavg());
}
