//! Where the pool and the single process did not run under the same conditions, said beside
//! the speedup and efficiency: huge pages on one side only, a baseline estimated rather than
//! run, a cold first round, a busy machine. An efficiency above 100 % is always explained.

use super::*;
use rules::{clean, huge_pages_needed};

/// The wall times of the measured rounds, in order: the pool's, and the single process's
/// (empty when it was not run), and how many warm-up rounds went before them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Rounds {
    pub pool_s: Vec<f64>,
    pub baseline_s: Vec<f64>,
    pub warmup: usize,
}

/// The caveats of a run whose reported speedup is `speedup` (over its rounds), each a
/// sentence; empty when pool and baseline ran alike and efficiency is at most 100 %.
pub(crate) fn caveats(obs: &Observations, rounds: &Rounds, speedup: Option<f64>) -> Vec<String> {
    let workers = obs.workers.max(1);
    let efficiency = speedup.map(|s| s / workers as f64);
    let mut said = Vec::new();
    // Whether a caveat so far explains a superlinear result.
    let mut explained = false;
    if obs.huge_pages && obs.baseline_wall_s.is_some() && !obs.baseline_estimated {
        let faults = match (obs.pool_minor_faults, obs.baseline_minor_faults) {
            (Some(p), Some(b)) => format!(" ({p} page faults against {b})"),
            _ => String::new(),
        };
        said.push(format!(
            "not like for like: the pool's results were in huge pages, the single process's \
             in 4 KiB pages{faults}; part of the speedup is the cheaper faults, not the \
             parallelism"
        ));
        explained = true;
    }
    if obs.baseline_estimated && obs.baseline_wall_s.is_some() {
        said.push(
            "the single-process time is estimated (n × the time the workload declares per \
             element), not measured: the speedup is against the ideal sequential time"
                .to_string(),
        );
        explained = true;
    }
    if rounds.warmup == 0 {
        for (what, walls) in [
            ("pool", &rounds.pool_s),
            ("single-process run", &rounds.baseline_s),
        ] {
            if let Some((first, rest)) = cold_first(walls) {
                said.push(format!(
                    "the first round's {what} took {}, the others {} (median): a cold first \
                     round (fresh pages, caches) is in the mean; --warmup 1 leaves it out",
                    seconds_short(first),
                    seconds_short(rest)
                ));
            }
        }
    }
    // Waiting workloads use little CPU on purpose.
    if let Some(share) = obs
        .cpu_share
        .filter(|s| *s < BUSY_CPU_SHARE && !obs.io_bound_hint)
    {
        said.push(format!(
            "the workers got {share:.2} of a core each: other processes slowed the pool, so \
             the speedup understates what this job does on a quiet machine"
        ));
    }
    if let Some(b) = obs
        .baseline_cpu_share
        .filter(|b| *b < BUSY_CPU_SHARE && !obs.io_bound_hint)
    {
        said.push(format!(
            "the single-process run got {b:.2} of a core: other processes slowed it, so the \
             speedup overstates what the workers did"
        ));
        explained = true;
    }
    if let Some(e) = efficiency.filter(|e| *e > 1.0) {
        if explained {
            said.push(format!(
                "efficiency {} is above 100% for the reason above, not from the workers alone",
                percent(e)
            ));
        } else {
            said.push(superlinear(obs, e, rounds));
        }
    }
    said
}

/// The first wall time and the median of the others, when there are at least two others
/// and the first is above [`COLD_ROUND_FACTOR`] times their median.
fn cold_first(walls: &[f64]) -> Option<(f64, f64)> {
    let (&first, rest) = walls.split_first()?;
    if rest.len() < 2 {
        return None;
    }
    let mut rest: Vec<f64> = rest.iter().copied().map(clean).collect();
    rest.sort_by(f64::total_cmp);
    let median = if rest.len() % 2 == 1 {
        rest[rest.len() / 2]
    } else {
        (rest[rest.len() / 2 - 1] + rest[rest.len() / 2]) / 2.0
    };
    (median > 0.0 && clean(first) > COLD_ROUND_FACTOR * median).then_some((first, median))
}

/// Why an efficiency `e` above 100 % with nothing unlike between the sides happened, from
/// the run's own measurements.
fn superlinear(obs: &Observations, e: f64, rounds: &Rounds) -> String {
    let head = format!("efficiency {} is above 100%", percent(e));
    let total: f64 = obs.compute_s.iter().copied().map(clean).sum();
    let baseline = obs.baseline_wall_s.map(clean).unwrap_or(0.0);
    if let (Some(pool), Some(single)) = (obs.pool_minor_faults, obs.baseline_minor_faults)
        && single > 0
        && (pool as f64) < 0.5 * single as f64
    {
        let page = obs.huge_page_bytes.unwrap_or(DEFAULT_HUGE_PAGE_BYTES);
        return format!(
            "{head}: the workers took {pool} page faults where one process took {single}, so \
             they wrote the same results for less (huge pages take {} for this output)",
            huge_pages_needed(obs.output_bytes, page)
        );
    }
    if baseline > 0.0 && total > 0.0 && total < SUPERLINEAR_COMPUTE_SHARE * baseline {
        return format!(
            "{head}: the workers computed for {} in total where one process needed {}, so \
             each element cost less in the pool (each worker's part of the data nearer its \
             core in cache), not parallelism alone",
            seconds_short(total),
            seconds_short(baseline)
        );
    }
    let runs = rounds.pool_s.len().max(1);
    format!(
        "{head}: nothing measured made the pool's work cheaper, so it is noise between the \
         {} ({}); --repeat 5 shows the spread",
        if runs == 1 { "two runs" } else { "rounds" },
        count(runs, "round")
    )
}
