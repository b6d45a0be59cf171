//! The start of one worker by each method: a 1-worker pool built (`spawn`, `fork`,
//! `forkserver`) until it is ready, then shut down, the methods interleaved round by round.

use super::*;
use crate::engine::pool::{Pool, StartMethod};

/// The methods, in the order each round builds them.
const METHODS: [StartMethod; 3] = [
    StartMethod::Spawn,
    StartMethod::Fork,
    StartMethod::ForkServer,
];
/// How long to wait, before a `fork` build, for the threads of the pool before it (its
/// output forwarders) to be gone.
const THREADS_GONE: Duration = Duration::from_millis(200);

/// The start of one worker by one method.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StartCost {
    /// `spawn`, `fork` or `forkserver`.
    pub method: StartMethod,
    /// Pools built and timed (after one untimed); 0 when the method was skipped.
    pub samples: usize,
    /// Median time for [`PoolBuilder::build`](crate::PoolBuilder::build) to return a ready
    /// 1-worker pool, in microseconds; `None` when skipped.
    pub build_p50_us: Option<f64>,
    /// 90th percentile of the same.
    pub build_p90_us: Option<f64>,
    /// Median of the pool's own [`Pool::spawn_time`] (the worker's start, within the build),
    /// in microseconds; `None` when skipped.
    pub start_p50_us: Option<f64>,
    /// Why the method was not measured; `None` when it was.
    pub skipped: Option<String>,
}

impl StartCost {
    fn skipped(method: StartMethod, why: String) -> Self {
        StartCost {
            method,
            samples: 0,
            build_p50_us: None,
            build_p90_us: None,
            start_p50_us: None,
            skipped: Some(why),
        }
    }
}

/// What one method has measured so far, or why it stopped.
struct Samples {
    method: StartMethod,
    build_us: Vec<f64>,
    start_us: Vec<f64>,
    skipped: Option<String>,
}

/// Builds a 1-worker pool with each method `rounds` times (plus an untimed first round),
/// interleaved. `spawn` and `forkserver` need the program's fork server, the sign that
/// `init` ran first thing in `main` (a spawned worker re-executes the program and serves
/// from `init`); `fork` needs this process single-threaded at each build. A method that
/// cannot be measured is skipped with the reason; a build that fails otherwise is an error.
pub(super) fn measure_starts(rounds: usize) -> Result<Vec<StartCost>> {
    let server = crate::engine::forkserver::available();
    let mut all: Vec<Samples> = METHODS
        .iter()
        .map(|&method| Samples {
            method,
            build_us: Vec::with_capacity(rounds),
            start_us: Vec::with_capacity(rounds),
            skipped: (!server && method != StartMethod::Fork).then(|| {
                "this program has no fork server: procpool::init() did not run first thing \
                 in main, while it was single-threaded (a spawned worker serves from init too)"
                    .to_string()
            }),
        })
        .collect();
    for round in 0..=rounds {
        for s in all.iter_mut().filter(|s| s.skipped.is_none()) {
            match build_one(s.method)? {
                Ok((build, start)) if round > 0 => {
                    s.build_us.push(build.as_secs_f64() * 1e6);
                    s.start_us.push(start.as_secs_f64() * 1e6);
                }
                Ok(_) => {}
                Err(why) => s.skipped = Some(why),
            }
        }
    }
    Ok(all
        .into_iter()
        .map(|mut s| match s.skipped {
            Some(why) => StartCost::skipped(s.method, why),
            None => {
                s.build_us.sort_by(f64::total_cmp);
                s.start_us.sort_by(f64::total_cmp);
                StartCost {
                    method: s.method,
                    samples: s.build_us.len(),
                    build_p50_us: Some(percentile(&s.build_us, 50.0)),
                    build_p90_us: Some(percentile(&s.build_us, 90.0)),
                    start_p50_us: Some(percentile(&s.start_us, 50.0)),
                    skipped: None,
                }
            }
        })
        .collect())
}

/// One 1-worker pool started by `method`, timed, then shut down: the build's time and the
/// pool's own start time. The inner `Err` says why `method` cannot be measured here.
fn build_one(method: StartMethod) -> Result<std::result::Result<(Duration, Duration), String>> {
    if method == StartMethod::Fork && !single_threaded_within(THREADS_GONE) {
        return Ok(Err(format!(
            "this process has {} threads at that moment, and fork copies only the calling \
             thread",
            crate::engine::sys::thread_count().map_or("several".into(), |n| n.to_string())
        )));
    }
    let began = Instant::now();
    let pool = Pool::builder().workers(1).start(method).build();
    let build = began.elapsed();
    let pool = match pool {
        Ok(pool) => pool,
        Err(e) if method == StartMethod::Fork && e.is_invalid_input() => {
            return Ok(Err(e.to_string()));
        }
        Err(e) => return Err(e),
    };
    let (used, start) = (pool.start_method(), pool.spawn_time());
    pool.shutdown();
    if used != method {
        return Ok(Err(format!(
            "the pool fell back to {used} (the fork server is gone or refused)"
        )));
    }
    Ok(Ok((build, start)))
}

/// Whether this process has a single thread, waiting up to `wait` for it.
fn single_threaded_within(wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if crate::engine::sys::thread_count() == Some(1) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_is_not_measured_while_the_process_has_threads() {
        // Keep a second thread alive for the whole call, whatever the harness does.
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            let _ = stop_rx.recv();
        });
        let answer = build_one(StartMethod::Fork);
        drop(stop_tx);
        helper.join().unwrap();
        let why = answer
            .expect("not an error, a reason")
            .expect_err("no fork from a threaded process");
        assert!(why.contains("threads"), "{why}");
        assert!(why.contains("fork copies only the calling thread"), "{why}");
    }
}
