//! The advice matrix as a smoke test: every known-limit job of `cargo bench --bench advice`
//! (smaller, on this unoptimized build) gets advice naming its limit. Names only, never a
//! speed. A busy machine is an honest answer anywhere: when the workers' measured CPU share
//! is below 0.8 of a core, `contended` first is right, and the limits it distorts must not
//! follow it.
#![cfg(feature = "cli")]

#[path = "../benches/advice/scenarios.rs"]
#[allow(dead_code)]
mod scenarios;

use std::time::Duration;

use scenarios::{Hog, SCENARIOS, Scenario, args, cpu_share, first_advice, follow, run};

const BIN: &str = env!("CARGO_BIN_EXE_procpool");
const LIMIT: Duration = Duration::from_secs(120);

/// The limits a busy machine or shared cores distort, which must not follow `contended`.
const DISTORTED: &[&str] = &["short-chunks", "imbalanced", "memory-bound"];

/// Runs `s`'s smoke job and checks what the advice named.
fn check(s: &Scenario) {
    let flags: Vec<String> = s.flags.iter().map(|f| f.to_string()).collect();
    let job: Vec<String> = s.smoke_job.iter().map(|f| f.to_string()).collect();
    let _hog = s.hog.then(|| Hog::start(2));
    let r = run(BIN, &args(&flags, &job, &[]), LIMIT);
    let (limit, text) = first_advice(&r);
    let limits: Vec<&str> = r["advice"]
        .as_array()
        .expect("advice is a list")
        .iter()
        .map(|a| a["limit"].as_str().expect("a limit"))
        .collect();
    let share = cpu_share(&r);
    let busy = share.is_some_and(|x| x < 0.8);
    let ok = limit == s.expected
        || (limit == "contended" && busy && !limits.iter().any(|l| DISTORTED.contains(l)))
        || (s.optimized_only && limit == "scaling");
    assert!(
        ok,
        "{}: `{}` expected, the advice named {limits:?} (CPU share {share:?}): {text}",
        s.name, s.expected
    );
    // The advice for the expected limit can be followed: it names what to change. (At the
    // ceiling the cores set, the oversubscribed advice rightly suggests nothing.)
    let at_ceiling =
        limit == "oversubscribed" && text.contains("fewer workers would not be faster");
    if limit == s.expected && s.expected != "io-bound" && !at_ceiling {
        assert!(
            follow(&limit, &text, s.flags, s.smoke_job).is_some(),
            "{}: nothing to follow in {text:?}",
            s.name
        );
    }
}

/// Every row without a hog, then the hog's (one test, so that the hog never runs beside
/// another row).
#[test]
fn every_known_limit_is_named() {
    for s in SCENARIOS.iter().filter(|s| !s.hog) {
        check(s);
    }
    a_job_next_to_cpu_hogs_is_called_contended_when_its_share_is_low();
}

/// A CPU hog per core beside the job: when the workers' share is measured low, the advice
/// says `contended` first (the name only; the share is whatever the machine gave).
fn a_job_next_to_cpu_hogs_is_called_contended_when_its_share_is_low() {
    let hog = SCENARIOS.iter().find(|s| s.hog).expect("a hog row");
    let flags: Vec<String> = hog.flags.iter().map(|f| f.to_string()).collect();
    let job: Vec<String> = hog.smoke_job.iter().map(|f| f.to_string()).collect();
    let r = {
        let _hog = Hog::start(2);
        run(BIN, &args(&flags, &job, &[]), LIMIT)
    };
    let share = cpu_share(&r).expect("collatz workers compute long enough to measure");
    let (limit, text) = first_advice(&r);
    if share < 0.8 {
        assert_eq!(limit, "contended", "share {share}: {text}");
        assert!(
            text.starts_with(&format!("The workers got {share:.2} of a core each")),
            "{text}"
        );
        assert!(
            !r["caveats"].as_array().unwrap().is_empty(),
            "the speedup's caveat: {r}"
        );
    } else {
        assert_ne!(limit, "contended", "share {share}: {text}");
    }
}
