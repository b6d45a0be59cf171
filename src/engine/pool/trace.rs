//! A job's timeline, recorded only when [`JobOptions::trace`](super::JobOptions::trace)
//! asks: every chunk attempt (which worker, when, which attempt), the parent's phases and
//! what happened to the workers.
//!
//! Queue dispatch: the posting's `trace` flag adds a record per chunk to the chunk table
//! (worker slot, attempt, start and end); the worker that finishes a chunk writes it before
//! the chunk's done byte, so the parent reads it like the results. An attempt that never
//! finished (its worker was killed, died or timed out) leaves the record to the retry; the
//! parent records it from the claim slot it already reads when it replaces the worker (the
//! slot's start time, the kill as its end). Without the flag nothing is written per chunk.
//! The parent reads the last posting's records after the job's wall time
//! ([`JobStats::wall`](super::JobStats::wall)) is taken: the caller still waits for that
//! read, but the job's measurement leaves it out.
//!
//! Channel dispatch: a chunk's end is when its `Done` arrived here, its start that minus
//! the kernel time the `Done` carries; a killed attempt starts when its chunk became the
//! worker's front chunk.
//!
//! Times are CLOCK_MONOTONIC nanoseconds, one clock for every process on the machine.

use std::ops::Range;

use serde::Serialize;

/// The timeline of a job: chunk attempts per worker, the parent's phases, and events.
///
/// Times are CLOCK_MONOTONIC nanoseconds (comparable across the processes of one
/// machine); [`Trace::start_ns`] is the job's start, a natural origin for a picture.
///
/// ```no_run
/// use procpool::{JobOptions, Pool};
/// use procpool::workload::Squares;
///
/// procpool::init();
/// let mut pool = Pool::builder().workers(2).build()?;
/// let options = JobOptions { trace: true, ..JobOptions::default() };
/// let run = pool.run_with(&Squares, 1_000_000, &options)?;
/// let trace = run.stats().trace.as_ref().expect("asked for");
/// for a in &trace.attempts {
///     println!("worker {} ran chunk {} for {} ns", a.worker, a.chunk, a.end_ns - a.start_ns);
/// }
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Trace {
    /// When the job (its dispatch) began.
    pub start_ns: u64,
    /// When it ended.
    pub end_ns: u64,
    /// Every chunk attempt that started: the finished ones and the killed ones.
    pub attempts: Vec<TraceAttempt>,
    /// The parent's phases, in order (the job; the lab adds start, baseline, verify).
    pub phases: Vec<TracePhase>,
    /// Deaths, restarts, retries, timeouts and streamed window writes, in order.
    pub events: Vec<TraceEvent>,
}

/// One attempt at a chunk, by one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TraceAttempt {
    /// The chunk's index in the job.
    pub chunk: u64,
    /// The job indices it covers.
    pub range: Range<u64>,
    /// The worker (its id; a replacement keeps the id of the worker it replaces).
    pub worker: usize,
    /// 0 the first time, one more each time the chunk is handed out again.
    pub attempt: u32,
    /// When it started running.
    pub start_ns: u64,
    /// When it finished, or when its worker was found dead or killed.
    pub end_ns: u64,
    /// Whether it finished (false: its worker died, was killed or timed out).
    pub finished: bool,
    /// Kernel time, when it finished (the channel's `Done` carries it; on the queue the
    /// worker's own start-to-end).
    pub compute_ns: Option<u64>,
}

/// A span of the parent's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TracePhase {
    /// "start workers", "job", "probe", "baseline", "verify", …
    pub name: String,
    /// When it began.
    pub start_ns: u64,
    /// When it ended.
    pub end_ns: u64,
}

/// What happened at one moment of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TraceEvent {
    /// When.
    pub at_ns: u64,
    /// What.
    pub kind: TraceEventKind,
    /// The worker it happened to, if any.
    pub worker: Option<usize>,
    /// The chunk it concerns, if any (a retry, a death while running).
    pub chunk: Option<u64>,
    /// In words: "killed by SIGKILL", "pid 4121", "attempt 1", "window 3".
    pub detail: String,
}

/// The kinds of [`TraceEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TraceEventKind {
    /// A worker was lost (it died, or was killed after a panic).
    Death,
    /// A worker's chunk ran past the chunk timeout: it is killed.
    Timeout,
    /// A replacement worker was started in a lost worker's place.
    Restart,
    /// A chunk was queued again.
    Retry,
    /// A streamed window was written to the output.
    WindowWritten,
}

impl TraceEventKind {
    /// A short name ("death", "window written").
    pub fn name(self) -> &'static str {
        match self {
            TraceEventKind::Death => "death",
            TraceEventKind::Timeout => "timeout",
            TraceEventKind::Restart => "restart",
            TraceEventKind::Retry => "retry",
            TraceEventKind::WindowWritten => "window written",
        }
    }
}

impl Trace {
    /// An empty trace of a job that starts now.
    pub(crate) fn begin() -> Self {
        Trace {
            start_ns: crate::engine::control::monotonic_ns(),
            ..Trace::default()
        }
    }

    /// Records an event now.
    pub(crate) fn event(
        &mut self,
        kind: TraceEventKind,
        worker: Option<usize>,
        chunk: Option<u64>,
        detail: impl Into<String>,
    ) {
        self.events.push(TraceEvent {
            at_ns: crate::engine::control::monotonic_ns(),
            kind,
            worker,
            chunk,
            detail: detail.into(),
        });
    }

    /// Ends the job now: the "job" phase and the attempts in start order.
    pub(crate) fn finish(&mut self) {
        self.end_ns = crate::engine::control::monotonic_ns();
        self.phases.push(TracePhase {
            name: "job".into(),
            start_ns: self.start_ns,
            end_ns: self.end_ns,
        });
        self.attempts
            .sort_by_key(|a| (a.start_ns, a.worker, a.chunk, a.attempt));
    }

    /// The attempts of chunk `chunk`, in start order.
    pub fn attempts_of(&self, chunk: u64) -> impl Iterator<Item = &TraceAttempt> {
        self.attempts.iter().filter(move |a| a.chunk == chunk)
    }

    /// The earliest and latest time anything in the trace covers.
    pub fn span_ns(&self) -> (u64, u64) {
        let starts = self.phases.iter().map(|p| p.start_ns);
        let ends = self.phases.iter().map(|p| p.end_ns);
        let lo = starts
            .chain(self.attempts.iter().map(|a| a.start_ns))
            .chain(self.events.iter().map(|e| e.at_ns))
            .chain([self.start_ns])
            .min()
            .unwrap_or(0);
        let hi = ends
            .chain(self.attempts.iter().map(|a| a.end_ns))
            .chain(self.events.iter().map(|e| e.at_ns))
            .chain([self.end_ns])
            .max()
            .unwrap_or(0);
        (lo, hi.max(lo))
    }
}

/// The nanosecond CLOCK_MONOTONIC reading of `t`, an `Instant` of this process (both are
/// CLOCK_MONOTONIC on Linux; the conversion goes through the time since `t`).
pub(crate) fn ns_of(t: std::time::Instant) -> u64 {
    let ago = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
    crate::engine::control::monotonic_ns().saturating_sub(ago)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_covers_phases_attempts_and_events() {
        let mut t = Trace {
            start_ns: 100,
            end_ns: 200,
            ..Trace::default()
        };
        t.phases.push(TracePhase {
            name: "start workers".into(),
            start_ns: 50,
            end_ns: 100,
        });
        t.attempts.push(TraceAttempt {
            chunk: 0,
            range: 0..10,
            worker: 1,
            attempt: 0,
            start_ns: 120,
            end_ns: 250,
            finished: true,
            compute_ns: Some(130),
        });
        assert_eq!(t.span_ns(), (50, 250));
        assert_eq!(t.attempts_of(0).count(), 1);
        assert_eq!(t.attempts_of(1).count(), 0);
        assert_eq!(TraceEventKind::WindowWritten.name(), "window written");
    }
}
