//! One function per limit: each looks at the measurements and, when its limit shows,
//! returns the advice with the run's own numbers and what to try.

use super::*;

/// Starting the workers above [`START_SHARE_MAX`] of the pool's wall time, or the pool's
/// fixed costs (its wall time less the busiest worker's compute and its share of the
/// per-chunk dispatch: starting, handing out the job, collecting it) longer than the whole
/// job took in one process. With a per-chunk verdict (`per_chunk`) the pool's time outside
/// compute is the chunks' cost, so only starting itself is compared with the job.
pub(super) fn start_dominated(
    obs: &Observations,
    m: &Measured,
    per_chunk: bool,
) -> Option<Candidate> {
    let share = m.start_share();
    let busiest = m.compute.iter().copied().fold(0.0, f64::max);
    let dispatch = clean(m.chunk_overhead * obs.chunks as f64 / m.workers as f64);
    let fixed = if per_chunk {
        m.spawn
    } else {
        (m.pool - busiest - dispatch).max(m.spawn)
    };
    let longer_than_job = m.baseline.filter(|&b| !obs.baseline_estimated && fixed > b);
    if !(share > START_SHARE_MAX || longer_than_job.is_some()) {
        return None;
    }
    let head = match longer_than_job {
        Some(b) if fixed > m.spawn => format!(
            "Starting {} and handing them the job took {} of the {} run (starting alone \
             {}), longer than one process took for the whole job ({})",
            count(m.workers, "worker"),
            seconds_short(fixed),
            seconds_short(m.pool),
            seconds_short(m.spawn),
            seconds_short(b)
        ),
        Some(b) => format!(
            "Starting {} took {} of the {} run, longer than one process took for the whole \
             job ({})",
            count(m.workers, "worker"),
            seconds_short(m.spawn),
            seconds_short(m.pool),
            seconds_short(b)
        ),
        None => format!(
            "Starting {} took {} of the {} run",
            count(m.workers, "worker"),
            seconds_short(m.spawn),
            seconds_short(m.pool)
        ),
    };
    Some(Candidate::new(
        Kind::Cost,
        share.max(longer_than_job.map_or(0.0, |_| share_of_run(fixed, m.pool))),
        Limit::StartDominated,
        format!(
            "{head}: the job is too short for processes to pay off; give it more work \
             (larger n) or reuse a Pool across jobs."
        ),
    ))
}

/// `part / whole` at most 1, or 0 when `whole` is not positive.
fn share_of_run(part: f64, whole: f64) -> f64 {
    share(part, whole).min(1.0)
}

/// Parameters above [`LARGE_PARAMS_BYTES`]: ranked first among the costs (the run cannot
/// say how much of it they took, but they are the easiest to remove).
pub(super) fn large_params(obs: &Observations) -> Option<Candidate> {
    (obs.param_bytes > LARGE_PARAMS_BYTES).then(|| {
        Candidate::new(
            Kind::Cost,
            1.0,
            Limit::LargeParams,
            format!(
                "The workload's parameters are {} encoded, paid on every job and decoded by \
                 every worker when they change; hold read-only data in a procpool::Input and \
                 other large values in a procpool::Param.",
                crate::units::bytes(u128::from(obs.param_bytes))
            ),
        )
    })
}

/// What handing out a chunk cost, in words, for the dispatch that ran.
pub(super) fn dispatch_cost(dispatch: Option<Dispatch>) -> &'static str {
    match dispatch {
        Some(Dispatch::Queue) => "queue dispatch",
        Some(Dispatch::Channel) => "channel messaging",
        None => "messaging",
    }
}

/// The share of the running part that went to handing out chunks, chunk by chunk.
fn dispatch_weight(m: &Measured) -> f64 {
    let (compute, overhead) = (m.chunk_compute, m.chunk_overhead);
    (1.0 - m.start_share()) * overhead / (overhead + compute)
}

/// Chunks too small for their dispatch (queue dispatch, or none known): suggests larger
/// chunks. Channel dispatch has [`channel_dispatch`] instead.
pub(super) fn ipc_bound(obs: &Observations, m: &Measured) -> Option<Candidate> {
    let (compute, overhead) = (m.chunk_compute, m.chunk_overhead);
    if !(overhead > 0.0 && compute < IPC_MIN_COMPUTE_RATIO * overhead) {
        return None;
    }
    let weight = dispatch_weight(m);
    let current = obs.chunk_size.max(1);
    let suggested = suggested_chunk_size(current, compute, overhead, obs.n, m.workers);
    let (head, auto) = match obs.dispatch {
        Some(Dispatch::Queue) => (
            format!(
                "Each chunk computed for {} but its queue dispatch (claim + bookkeeping) cost \
                 {}: the chunks are too small even for the queue.",
                seconds_short(compute),
                seconds_short(overhead)
            ),
            " or --chunk-size auto",
        ),
        other => (
            format!(
                "Each chunk computed for {} but cost {} of {}: IPC-bound.",
                seconds_short(compute),
                seconds_short(overhead),
                dispatch_cost(other)
            ),
            "",
        ),
    };
    let text = if suggested > current {
        format!("{head} Try --chunk-size {suggested}{auto}.")
    } else {
        format!(
            "{head} Chunks of {current} cannot grow while every worker keeps \
             {MIN_CHUNKS_PER_WORKER} of them; give each element more work or the job a \
             larger n."
        )
    };
    Some(Candidate::new(Kind::Cost, weight, Limit::IpcBound, text))
}

/// Channel dispatch whose messages cost more than [`CHANNEL_DISPATCH_MAX_SHARE`] of a
/// chunk's compute: suggests `--dispatch queue`, which sends no message per chunk (and
/// larger chunks, when they can grow).
pub(super) fn channel_dispatch(obs: &Observations, m: &Measured) -> Option<Candidate> {
    let (compute, overhead) = (m.chunk_compute, m.chunk_overhead);
    if !(overhead > 0.0 && overhead > CHANNEL_DISPATCH_MAX_SHARE * compute) {
        return None;
    }
    let current = obs.chunk_size.max(1);
    let suggested = suggested_chunk_size(current, compute, overhead, obs.n, m.workers);
    let larger = if suggested > current {
        format!(", or --chunk-size {suggested}")
    } else {
        String::new()
    };
    let share = if compute > 0.0 {
        format!(" ({} of its compute)", percent(overhead / compute))
    } else {
        String::new()
    };
    Some(Candidate::new(
        Kind::Cost,
        dispatch_weight(m),
        Limit::IpcBound,
        format!(
            "Each chunk computed for {} but cost {} of channel messaging{share}: a message \
             out and a Done back per chunk. Try --dispatch queue, where workers claim chunks \
             from shared memory with no message each{larger}.",
            seconds_short(compute),
            seconds_short(overhead)
        ),
    ))
}

/// The chunk size that makes a chunk's compute about [`IPC_TARGET_COMPUTE_RATIO`] times its
/// messaging cost: `chunk_size × 20 × overhead / compute`, rounded, at least 1, and at most
/// `n / (4 × workers)` so every worker still gets [`MIN_CHUNKS_PER_WORKER`] chunks.
pub(super) fn suggested_chunk_size(
    chunk_size: u64,
    compute: f64,
    overhead: f64,
    n: u64,
    workers: usize,
) -> u64 {
    let per_worker = MIN_CHUNKS_PER_WORKER.saturating_mul(workers.max(1) as u64);
    let cap = (n / per_worker).max(1);
    let wanted = chunk_size as f64 * IPC_TARGET_COMPUTE_RATIO * overhead / compute;
    // `as` saturates: an infinite or huge wish becomes u64::MAX, NaN becomes 0.
    let wanted = if wanted.is_nan() {
        chunk_size
    } else {
        wanted.round() as u64
    };
    wanted.max(1).min(cap)
}

pub(super) fn oversubscribed(obs: &Observations, m: &Measured) -> Option<Candidate> {
    let cores = obs.cores_logical;
    if obs.io_bound_hint || cores == 0 || m.workers <= cores {
        return None;
    }
    let got = m
        .speedup
        .map(|s| format!(" (this run got {})", times(s)))
        .unwrap_or_default();
    let share = count(m.workers, "worker") + " share " + &count(cores, "core");
    // At the ceiling the cores set, the worker count cost nothing measurable: say where
    // the limit is, and suggest no change that would not pay.
    let text = match m.speedup {
        Some(s) if s >= super::OVERSUBSCRIBED_AT_CEILING * cores as f64 => format!(
            "{share}: at most {cores}× is possible, and this run got {} of it: the cores set \
             the limit, and fewer workers would not be faster (more workers than cores cost \
             memory and start time here, not speed).",
            times(s)
        ),
        _ => format!("{share}: at most {cores}× is possible{got}; use --workers {cores}."),
    };
    Some(Candidate::new(
        Kind::Cost,
        1.0 - cores as f64 / m.workers as f64,
        Limit::Oversubscribed,
        text,
    ))
}

/// What the workers spent, per worker on average, on everything but computing and waiting
/// for the slowest: starting, and handing out chunks.
fn other_overheads(obs: &Observations, m: &Measured) -> f64 {
    let dispatch = m.chunk_overhead * obs.chunks as f64 / m.workers as f64;
    m.spawn + clean(dispatch)
}

/// The busiest worker's compute above the mean, when it cost the run more than its other
/// overheads together ([`IMBALANCE_OVER_OVERHEADS`]) or is far above the mean
/// ([`IMBALANCE_MAX_OVER_MEAN`]), and is not a small share of the wall time
/// ([`IMBALANCE_MIN_WALL_SHARE`]): suggests the schedule or chunk size that evens it out.
pub(super) fn imbalanced(obs: &Observations, m: &Measured) -> Option<Candidate> {
    if m.compute.len() < 2 || m.pool <= 0.0 {
        return None;
    }
    let mean = m.compute.iter().sum::<f64>() / m.compute.len() as f64;
    let (slowest, max) = m
        .compute
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    let gap = max - mean;
    let overheads = other_overheads(obs, m);
    let above_overheads = gap > IMBALANCE_OVER_OVERHEADS * overheads;
    if !(mean > 0.0
        && (max > IMBALANCE_MAX_OVER_MEAN * mean || above_overheads)
        && gap > IMBALANCE_MIN_WALL_SHARE * m.pool)
    {
        return None;
    }
    let than = if above_overheads {
        format!(
            ", more than starting and dispatch cost together ({})",
            seconds_short(overheads)
        )
    } else {
        String::new()
    };
    let head = format!(
        "Worker {slowest} computed for {}, {} ({}) more than the mean of {}{than}: on \
         average a worker sat idle {} of the {} run waiting for it.",
        seconds_short(max),
        seconds_short(gap),
        percent(gap / mean),
        seconds_short(mean),
        seconds_short(gap),
        seconds_short(m.pool)
    );
    let chunk = obs.chunk_size.max(1);
    let text = if obs.schedule == "static" {
        format!(
            "{head} The static schedule fixes each worker's share up front; try --schedule \
             dynamic."
        )
    } else if chunk > 1 {
        format!(
            "{head} Chunks of {chunk} are too coarse to even out; try --chunk-size {}.",
            chunk / 2
        )
    } else {
        format!("{head} Every chunk is already one element: the slowest elements set the end.")
    };
    Some(Candidate::new(
        Kind::Cost,
        share(gap, m.pool).min(1.0),
        Limit::Imbalanced,
        text,
    ))
}

/// Bytes of results each chunk wrote, on average (0 without chunks).
fn chunk_bytes(obs: &Observations) -> u64 {
    obs.output_bytes / obs.chunks.max(1)
}

/// The workers' summed compute, and that sum with waiting for a shared core taken out:
/// kernel time is wall time, so with more workers than cores only `cores` workers' worth
/// of it was spent computing.
fn compute_totals(obs: &Observations, m: &Measured) -> (f64, f64) {
    let total: f64 = m.compute.iter().sum();
    let cpu_total = if !obs.io_bound_hint && obs.cores_logical > 0 && m.workers > obs.cores_logical
    {
        total * obs.cores_logical as f64 / m.workers as f64
    } else {
        total
    };
    (total, cpu_total)
}

/// Page faults per 4 KiB page of results: (pool, single process), when both were counted.
fn faults_per_page(obs: &Observations) -> Option<(u64, u64, f64, f64)> {
    match (obs.pool_minor_faults, obs.baseline_minor_faults) {
        (Some(pool), Some(single)) if pool > 0 && single > 0 => {
            let pages = (obs.output_bytes as f64 / FAULT_PAGE_BYTES).max(1.0);
            Some((pool, single, pool as f64 / pages, single as f64 / pages))
        }
        _ => None,
    }
}

/// Huge pages a region of `bytes` needs (one more for the control area), of `page` bytes.
pub(super) fn huge_pages_needed(bytes: u64, page: u64) -> u64 {
    bytes.div_ceil(page.max(1)) + 1
}

/// Workers slowed each other writing results: their summed compute above
/// [`MEMORY_COMPUTE_INFLATION`] times the single process's, at more than
/// [`MEMORY_MIN_OUTPUT_RATE`], in chunks of at least [`SHORT_CHUNK_BYTES`] (shorter ones are
/// [`short_chunks`]' evidence), threads no faster, and when faults were counted, at least
/// [`MEMORY_MIN_FAULTS_PER_PAGE`] per page. Offers `--huge-pages` when faults were counted
/// and the pool did not already use them.
pub(super) fn memory_bound(obs: &Observations, m: &Measured) -> Option<Candidate> {
    let baseline = m.baseline?;
    if obs.baseline_estimated || chunk_bytes(obs) < SHORT_CHUNK_BYTES {
        return None;
    }
    let (total, cpu_total) = compute_totals(obs, m);
    let rate = obs.output_bytes as f64 / baseline;
    let run = if m.run > 0.0 { m.run } else { m.pool };
    let threads = obs.threads_wall_s.map(clean);
    let threads_no_faster = threads.is_none_or(|t| t >= MEMORY_THREADS_NO_FASTER * run);
    let faults = faults_per_page(obs);
    let faulting = faults.is_none_or(|(_, _, per_page, _)| per_page >= MEMORY_MIN_FAULTS_PER_PAGE);
    if !(cpu_total > MEMORY_COMPUTE_INFLATION * baseline
        && rate > MEMORY_MIN_OUTPUT_RATE
        && threads_no_faster
        && faulting)
    {
        return None;
    }
    let threads = threads
        .map(|t| {
            format!(
                ", and threads took {}, no faster than processes",
                seconds_short(t)
            )
        })
        .unwrap_or_default();
    let (faults, huge) = match faults {
        Some((pool, single, pool_per_page, single_per_page)) => (
            format!(
                " The workers took {pool} page faults ({} per 4 KiB page of results), one \
                 process {single} ({}): about {} of compute per fault in the pool against {} \
                 alone.",
                num(pool_per_page),
                num(single_per_page),
                seconds_short(total / pool as f64),
                seconds_short(baseline / single as f64)
            ),
            (!obs.huge_pages).then(|| huge_pages_offer(obs)),
        ),
        None => (String::new(), None),
    };
    Some(Candidate::new(
        Kind::Cost,
        1.0 - baseline / cpu_total,
        Limit::MemoryBound,
        format!(
            "The {} computed for {} in total where one process needed {}, writing {} of \
             results in chunks of {}{threads}: page faults and memory bandwidth set the speed, \
             not the cores, so more cores won't help; write less, or compute more per \
             byte.{faults}{}",
            count(m.workers, "worker"),
            seconds_short(total),
            seconds_short(baseline),
            crate::units::rate(rate),
            crate::units::bytes(u128::from(chunk_bytes(obs))),
            huge.unwrap_or_default()
        ),
    ))
}

/// The `--huge-pages` suggestion, with the pages to reserve for this run's results.
fn huge_pages_offer(obs: &Observations) -> String {
    let page = obs.huge_page_bytes.unwrap_or(DEFAULT_HUGE_PAGE_BYTES);
    let needed = huge_pages_needed(obs.output_bytes, page);
    let free = obs
        .huge_pages_free
        .map(|f| format!(", {f} free now"))
        .unwrap_or_default();
    format!(
        " Try --huge-pages: one fault per {} instead of per 4 KiB; it needs {needed} huge \
         pages reserved{free} (as root: echo {needed} > /proc/sys/vm/nr_hugepages).",
        crate::units::bytes(u128::from(page))
    )
}

/// Chunks writing less than [`SHORT_CHUNK_BYTES`] each while the workers' summed compute
/// is above [`MEMORY_COMPUTE_INFLATION`] times the single process's (queue dispatch, or
/// threads): the same elements cost more in short chunks. Suggests a chunk of
/// [`SHORT_CHUNK_TARGET_BYTES`] of results, while every worker keeps
/// [`MIN_CHUNKS_PER_WORKER`] chunks.
pub(super) fn short_chunks(obs: &Observations, m: &Measured) -> Option<Candidate> {
    let baseline = m.baseline?;
    let bytes = chunk_bytes(obs);
    if obs.io_bound_hint
        || obs.baseline_estimated
        || obs.dispatch == Some(Dispatch::Channel)
        || bytes == 0
        || bytes >= SHORT_CHUNK_BYTES
    {
        return None;
    }
    let (total, cpu_total) = compute_totals(obs, m);
    if cpu_total <= MEMORY_COMPUTE_INFLATION * baseline {
        return None;
    }
    let current = obs.chunk_size.max(1);
    let per_worker = MIN_CHUNKS_PER_WORKER.saturating_mul(m.workers as u64);
    let cap = (obs.n / per_worker).max(1);
    let wanted = current.saturating_mul(SHORT_CHUNK_TARGET_BYTES.div_ceil(bytes));
    let suggested = wanted.min(cap);
    if suggested <= current {
        return None;
    }
    Some(Candidate::new(
        Kind::Cost,
        1.0 - baseline / cpu_total,
        Limit::ShortChunks,
        format!(
            "Each chunk wrote {} of results ({} of 4 KiB), and the {} computed for {} in \
             total where one process needed {} ({}): in chunks this short, workers fault \
             neighbouring pages of one shared region and claim a chunk every few pages. Try \
             --chunk-size {suggested} (about {} of results a chunk).",
            crate::units::bytes(u128::from(bytes)),
            count(bytes.div_ceil(FAULT_PAGE_BYTES as u64), "page"),
            count(m.workers, "worker"),
            seconds_short(total),
            seconds_short(baseline),
            times(total / baseline),
            crate::units::bytes(u128::from(suggested.saturating_mul(bytes) / current))
        ),
    ))
}

/// Other processes took the CPUs: the workers' CPU share below [`BUSY_CPU_SHARE`] (of
/// `cores / workers` with more workers than cores), the scheduler having taken their CPU
/// more often than they blocked. Says the load and the steal time, and
/// suggests a quiet machine or the workers the machine actually gave.
pub(super) fn contended(obs: &Observations, m: &Measured) -> Option<Candidate> {
    let share = obs.cpu_share.filter(|s| s.is_finite() && *s >= 0.0)?;
    // Off the CPU by blocking (more voluntary switches than preemptions) is the workers'
    // own waiting, not other processes.
    let blocked = obs
        .switches
        .is_some_and(|(voluntary, involuntary)| voluntary > involuntary);
    if obs.io_bound_hint || blocked {
        return None;
    }
    let cores = obs.cores_logical;
    let fair = if cores > 0 && m.workers > cores {
        cores as f64 / m.workers as f64
    } else {
        1.0
    };
    if share >= BUSY_CPU_SHARE * fair {
        return None;
    }
    let load = match obs.load {
        (Some(a), Some(b)) if format!("{a:.1}") != format!("{b:.1}") => {
            format!("load {a:.1} at the start, {b:.1} at the end")
        }
        (Some(a), _) | (None, Some(a)) => format!("load {a:.1}"),
        (None, None) => "load unknown".to_string(),
    };
    let steal = obs
        .steal_share
        .filter(|s| *s >= STEAL_WORTH_SAYING)
        .map(|s| format!(", {} of all CPU time stolen by the hypervisor", percent(s)))
        .unwrap_or_default();
    let baseline = obs
        .baseline_cpu_share
        .filter(|b| *b < BUSY_CPU_SHARE)
        .map(|b| {
            format!(
                "; the single-process run got {b:.2} of a core, so both sides of the speedup \
                 were slowed"
            )
        })
        .unwrap_or_default();
    let usable = ((m.workers as f64 * share).round() as usize).max(1);
    let fewer = if usable < m.workers {
        format!(" or with fewer workers (--workers {usable})")
    } else {
        String::new()
    };
    Some(Candidate::new(
        Kind::Outside,
        1.0 - share,
        Limit::Contended,
        format!(
            "The workers got {share:.2} of a core each while they computed: other processes \
             used the CPUs ({load}{steal}){baseline}; run again on a quiet machine{fewer}."
        ),
    ))
}

pub(super) fn io_bound(obs: &Observations, m: &Measured) -> Option<Candidate> {
    if !obs.io_bound_hint || m.efficiency.is_some_and(|e| e < IO_MIN_EFFICIENCY) {
        return None;
    }
    let more = m.workers.saturating_mul(2);
    let measured = match (m.speedup, m.efficiency) {
        (Some(s), Some(e)) => format!(
            ": {} gave {} on {} (efficiency {}), so",
            count(m.workers, "worker"),
            times(s),
            count(obs.cores_logical.max(1), "core"),
            percent(e)
        ),
        _ => " rather than compute, so".to_string(),
    };
    Some(Candidate::new(
        Kind::Verdict,
        m.efficiency.unwrap_or(0.0),
        Limit::IoBound,
        format!(
            "The workers mostly wait{measured} more workers than cores help here (the \
             tutorials' threads-or-async case); try --workers {more}."
        ),
    ))
}

pub(super) fn scaling(obs: &Observations, m: &Measured) -> Candidate {
    let mut facts = Vec::new();
    if m.pool > 0.0 {
        facts.push(format!(
            "starting took {} of the run",
            percent(m.start_share())
        ));
    }
    let ratio = m.chunk_ratio();
    if m.chunk_compute > 0.0 && ratio.is_finite() {
        facts.push(format!(
            "each chunk computed {}× its {} cost",
            num(ratio),
            dispatch_cost(obs.dispatch)
        ));
    }
    let mean = m.compute.iter().sum::<f64>() / m.compute.len().max(1) as f64;
    let max = m.compute.iter().copied().fold(0.0, f64::max);
    if m.compute.len() > 1 && mean > 0.0 {
        facts.push(format!(
            "the slowest worker computed {} more than the mean",
            percent(max / mean - 1.0)
        ));
    }
    let facts = join_facts(&facts);
    let text = match m.efficiency {
        Some(e) if e >= SCALING_GOOD_EFFICIENCY => {
            let more = if obs.cores_logical > m.workers {
                format!(
                    "more workers would help: try --workers {}",
                    obs.cores_logical
                )
            } else {
                "more cores would help".to_string()
            };
            format!("Efficiency {}: the run scales; {more}.", percent(e))
        }
        Some(e) => format!(
            "Efficiency {} with no single limit standing out ({facts}); compare --mode \
             threads to see what processes cost here.",
            percent(e)
        ),
        None if facts.is_empty() => "No single-process baseline, so the speedup is unknown; \
                                     nothing measured limited the run."
            .to_string(),
        None => format!(
            "No single-process baseline, so the speedup is unknown; {facts}: nothing measured \
             limited the run."
        ),
    };
    Candidate::new(Kind::Verdict, 0.0, Limit::Scaling, text)
}

/// A time as a finite, non-negative number of seconds (anything else counts as 0).
pub(super) fn clean(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

/// `part / whole`, or 0 when `whole` is not positive.
pub(super) fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// `a`, `a and b`, `a, b and c`.
pub(super) fn join_facts(facts: &[String]) -> String {
    match facts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}
