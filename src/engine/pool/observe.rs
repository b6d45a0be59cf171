//! What a pool tells its caller while a job runs: progress, and workers lost and replaced.
//!
//! The engine prints nothing. Whoever builds the pool may pass an [`Observer`]; the
//! `procpool` command's draws a progress bar on a terminal and writes one line per lost
//! worker, a library caller may log, count or ignore the events.

use std::sync::Arc;

/// Something that happened while a job ran.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A job of `n` elements started.
    JobStarted {
        /// Elements in the job.
        n: u64,
    },
    /// More of the job is done: `done` of its `n` elements. Sent only when `done` changed:
    /// on the shared-memory queue about every 50 ms while the job runs (so a caller can
    /// draw a bar; a chunk slower than that shows as it finishes), on the channels as
    /// chunks finish (at most once per pass of the dispatch loop); and once with
    /// `done == n` when the job completes.
    Progress {
        /// Elements finished.
        done: u64,
        /// Elements in the job.
        n: u64,
    },
    /// A worker died, passed its chunk timeout, or failed while it started; a replacement
    /// is starting in its place.
    WorkerLost {
        /// The worker's id (its replacement takes the same id).
        worker: usize,
        /// The lost process's id.
        pid: u32,
        /// What happened, as a sentence: "worker 1 (pid 4242) killed by SIGKILL while
        /// running chunk 7".
        what: &'a str,
    },
    /// The job ended: `completed` is false when it failed or was interrupted.
    JobEnded {
        /// Whether every element was computed.
        completed: bool,
    },
}

/// Receives a pool's [`Event`]s.
///
/// Called on the thread that runs the job, from inside the dispatch loop, which supervises
/// every worker: return at once and never block. Anything that may wait (a terminal a user
/// paused, a full pipe) belongs on a thread of the observer's own.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use procpool::{Event, Observer};
///
/// /// Counts lost workers.
/// #[derive(Default)]
/// struct Losses(AtomicU64);
///
/// impl Observer for Losses {
///     fn event(&self, event: &Event<'_>) {
///         if let Event::WorkerLost { .. } = event {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
/// // Pool::builder().observer(std::sync::Arc::new(Losses::default()))
/// ```
pub trait Observer: Send + Sync {
    /// Takes one event.
    fn event(&self, event: &Event<'_>);
}

impl std::fmt::Debug for dyn Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Sends `event` to `observer`, if there is one.
pub(crate) fn tell(observer: &Option<Arc<dyn Observer>>, event: Event<'_>) {
    if let Some(observer) = observer {
        observer.event(&event);
    }
}
